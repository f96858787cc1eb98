// Command interop_faktory_worker is a stock faktory_worker_go worker for unifiedq's interop
// tests (tests/test_faktory_worker_go.py): a Manager with a handler registered per job type,
// as a Go shop runs one.
//
//	interop_faktory_worker -queue Q -jobtypes Add,SendEmail -count N [-fail Add] [-timeout 30s]
//
// Each handler prints one JSON line per job it ran, {"jid", "jobtype", "args", "custom"}
// (custom read through worker.HelperFor, as a Go handler reads it), and returns nil, or an
// error for the job types named by -fail (Faktory then retries or kills the job). The
// program exits 0 once N jobs ran, 1 on timeout. The server comes from FAKTORY_URL.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	worker "github.com/contribsys/faktory_worker_go"
)

func main() {
	queue := flag.String("queue", "default", "Faktory queue to process")
	jobtypes := flag.String("jobtypes", "", "comma-separated job types to register")
	count := flag.Int("count", 1, "exit after this many jobs ran")
	failing := flag.String("fail", "", "comma-separated job types whose handler returns an error")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	flag.Parse()

	fail := map[string]bool{}
	for _, t := range strings.Split(*failing, ",") {
		fail[t] = t != ""
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	ran := 0
	done := make(chan struct{})

	mgr := worker.NewManager()
	mgr.Concurrency = 1
	mgr.ShutdownTimeout = 2 * time.Second
	mgr.Logger = quiet{}
	mgr.ProcessStrictPriorityQueues(*queue)
	for _, t := range strings.Split(*jobtypes, ",") {
		jobtype := t
		mgr.Register(jobtype, func(ctx context.Context, args ...interface{}) error {
			help := worker.HelperFor(ctx)
			custom := map[string]interface{}{}
			for _, key := range []string{"tenant", "unifiedq"} {
				if v, ok := help.Custom(key); ok {
					custom[key] = v
				}
			}
			mu.Lock()
			defer mu.Unlock()
			_ = out.Encode(map[string]any{
				"jid": help.Jid(), "jobtype": help.JobType(), "args": args, "custom": custom,
			})
			ran++
			if ran == *count {
				close(done)
			}
			if fail[jobtype] {
				return errors.New("failing on purpose")
			}
			return nil
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-done:
		case <-time.After(*timeout):
			fmt.Fprintf(os.Stderr, "timeout: %d of %d jobs ran\n", ran, *count)
			os.Exit(1)
		}
		// Let the last job's ACK/FAIL reach the server before the manager stops.
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	if err := mgr.RunWithContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "run: %v\n", err)
		os.Exit(1)
	}
}

// quiet keeps stdout for the JSON lines: the manager logs to stderr only on errors.
type quiet struct{}

func (quiet) Debug(...interface{})          {}
func (quiet) Debugf(string, ...interface{}) {}
func (quiet) Info(...interface{})           {}
func (quiet) Infof(string, ...interface{})  {}
func (quiet) Warn(v ...interface{})         { fmt.Fprintln(os.Stderr, v...) }
func (quiet) Warnf(f string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", v...)
}
func (quiet) Error(v ...interface{}) { fmt.Fprintln(os.Stderr, v...) }
func (quiet) Errorf(f string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", v...)
}
func (quiet) Fatal(v ...interface{}) { fmt.Fprintln(os.Stderr, v...); os.Exit(1) }
func (quiet) Fatalf(f string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", v...)
	os.Exit(1)
}
