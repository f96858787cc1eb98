// Command asynq_bench is the Go asynq side of benchmarks/peers/run.py.
//
// Subcommands (each prints one JSON object on stdout; the Python harness parses it):
//
//	enqueue  enqueue -n tasks of -size bytes with asynq.Client, one call each; prints seconds
//	work     run an asynq.Server (no-op handler, -concurrency) until -n tasks were handled;
//	         prints the window from the first handler start to the last handler end, and the
//	         process CPU time (rusage) spent in that window
//	latency  like work, but each payload starts with the enqueue time (Unix ns, decimal, then
//	         a space); prints the enqueue->handler-start latency of every task after -warmup
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail("getrusage: %v", err)
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func emit(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fail("encode: %v", err)
	}
}

func payload(size int) []byte {
	return []byte(strings.Repeat("x", size))
}

func enqueue(opt asynq.RedisClientOpt, queue string, n, size int, stamp bool, gap time.Duration) {
	c := asynq.NewClient(opt)
	defer c.Close()
	body := payload(size)
	start := time.Now()
	for i := 0; i < n; i++ {
		b := body
		if stamp {
			b = []byte(strconv.FormatInt(time.Now().UnixNano(), 10) + " ")
			b = append(b, body[:max(0, size-len(b))]...)
		}
		if _, err := c.Enqueue(asynq.NewTask("bench:noop", b), asynq.Queue(queue)); err != nil {
			fail("enqueue: %v", err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	emit(map[string]any{"seconds": time.Since(start).Seconds(), "n": n})
}

func work(opt asynq.RedisClientOpt, queue string, n, concurrency, warmup int, latency bool,
	check time.Duration) {
	var mu sync.Mutex
	handled := 0
	var first, last time.Time
	var cpu0 float64
	lat := make([]float64, 0, n)
	done := make(chan struct{})
	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency:       concurrency,
		Queues:            map[string]int{queue: 1},
		TaskCheckInterval: check,
		LogLevel:          asynq.ErrorLevel,
		ShutdownTimeout:   time.Second,
	})
	handler := asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		started := time.Now()
		var l float64
		if latency {
			head, _, _ := strings.Cut(string(t.Payload()), " ")
			ns, err := strconv.ParseInt(head, 10, 64)
			if err != nil {
				fail("bad latency payload %q", head)
			}
			l = float64(started.UnixNano()-ns) / 1e9
		}
		mu.Lock()
		defer mu.Unlock()
		if handled == 0 {
			first = started
			cpu0 = cpuSeconds()
		}
		handled++
		if latency && handled > warmup {
			lat = append(lat, l)
		}
		if handled == n+warmup {
			last = time.Now()
			close(done)
		}
		return nil
	})
	if err := srv.Start(handler); err != nil {
		fail("start server: %v", err)
	}
	emitReady()
	<-done
	res := map[string]any{
		"handled":     handled,
		"seconds":     last.Sub(first).Seconds(),
		"cpu_seconds": cpuSeconds() - cpu0,
	}
	if latency {
		res["latencies"] = lat
	}
	emit(res)
	os.Exit(0)
}

// emitReady prints the line the harness waits for before it starts a latency producer.
func emitReady() { emit(map[string]any{"ready": true}) }

func main() {
	if len(os.Args) < 2 {
		fail("usage: asynq_bench enqueue|work|latency [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	queue := fs.String("queue", "bench", "asynq queue name")
	n := fs.Int("n", 10000, "tasks")
	size := fs.Int("size", 64, "payload bytes")
	concurrency := fs.Int("concurrency", 8, "server concurrency")
	warmup := fs.Int("warmup", 0, "latency: tasks handled before sampling starts")
	gap := fs.Duration("gap", 0, "enqueue: pause after each task")
	stamp := fs.Bool("stamp", false, "enqueue: start each payload with the enqueue time")
	check := fs.Duration("check", time.Second, "server TaskCheckInterval (idle poll period)")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	opt := asynq.RedisClientOpt{Addr: *addr}
	switch os.Args[1] {
	case "enqueue":
		enqueue(opt, *queue, *n, *size, *stamp, *gap)
	case "work":
		work(opt, *queue, *n, *concurrency, 0, false, *check)
	case "latency":
		work(opt, *queue, *n, *concurrency, *warmup, true, *check)
	default:
		fail("unknown subcommand %q", os.Args[1])
	}
}
