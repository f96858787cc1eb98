// Command interop_faktory is a Go Faktory client for unifiedq's interop tests
// (tests/test_faktory_native.py), written with Faktory's own Go client
// (github.com/contribsys/faktory/client, the package faktory_worker_go is built on).
//
//	push -queue Q -jobtype T -args '[1,"two"]' [-custom '{"k":"v"}']
//	    PUSH one native job; prints {"jid": ...}.
//	work -queue Q -count N [-timeout 30s]
//	    FETCH N jobs as a Go worker would, ACK each, and print one JSON line per job:
//	    {"jid", "jobtype", "queue", "args", "custom"}.
//
// The server comes from FAKTORY_URL (tcp://[:password@]host:port), as for every Faktory
// client.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	faktory "github.com/contribsys/faktory/client"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop_faktory push|work [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	queue := fs.String("queue", "default", "Faktory queue")
	jobtype := fs.String("jobtype", "", "jobtype of the pushed job")
	args := fs.String("args", "[]", "JSON array: the pushed job's args")
	custom := fs.String("custom", "", "JSON object: the pushed job's custom hash")
	count := fs.Int("count", 1, "jobs to fetch")
	timeout := fs.Duration("timeout", 30*time.Second, "give up fetching after this long")
	_ = fs.Parse(os.Args[2:])

	cl, err := faktory.Open()
	if err != nil {
		fail("open: %v", err)
	}
	defer cl.Close()
	out := json.NewEncoder(os.Stdout)

	switch os.Args[1] {
	case "push":
		var a []any
		if err := json.Unmarshal([]byte(*args), &a); err != nil {
			fail("-args: %v", err)
		}
		job := faktory.NewJob(*jobtype, a...)
		job.Queue = *queue
		if *custom != "" {
			if err := json.Unmarshal([]byte(*custom), &job.Custom); err != nil {
				fail("-custom: %v", err)
			}
		}
		if err := cl.Push(job); err != nil {
			fail("push: %v", err)
		}
		_ = out.Encode(map[string]any{"jid": job.Jid})
	case "work":
		deadline := time.Now().Add(*timeout)
		for n := 0; n < *count; {
			if time.Now().After(deadline) {
				fail("timeout: %d of %d jobs fetched", n, *count)
			}
			job, err := cl.Fetch(*queue) // blocks up to 2 s on the server
			if err != nil {
				fail("fetch: %v", err)
			}
			if job == nil {
				continue
			}
			if err := cl.Ack(job.Jid); err != nil {
				fail("ack: %v", err)
			}
			_ = out.Encode(map[string]any{
				"jid": job.Jid, "jobtype": job.Type, "queue": job.Queue,
				"args": job.Args, "custom": job.Custom,
			})
			n++
		}
	default:
		fail("unknown command %q", os.Args[1])
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}
