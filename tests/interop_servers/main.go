// Command interop_servers prints what asynq's Inspector (v0.26) sees of the server registry.
//
// Subcommands (JSON lines on stdout; the pytest side parses them):
//
//	servers   asynq.Inspector.Servers(): every live server and the tasks its workers run
//	run       an asynq.Server on -queue that idles for -timeout (a Go peer for comparison)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/hibiken/asynq"
)

type worker struct {
	TaskID   string  `json:"task_id"`
	Type     string  `json:"type"`
	Payload  string  `json:"payload"`
	Queue    string  `json:"queue"`
	Started  float64 `json:"started"`
	Deadline float64 `json:"deadline"`
}

type server struct {
	ID          string         `json:"id"`
	Host        string         `json:"host"`
	PID         int            `json:"pid"`
	Concurrency int            `json:"concurrency"`
	Queues      map[string]int `json:"queues"`
	Strict      bool           `json:"strict_priority"`
	Started     float64        `json:"started"`
	Status      string         `json:"status"`
	Active      []worker       `json:"active"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop_servers servers|run [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:6379", "redis address")
	db := fs.Int("db", 0, "redis db")
	password := fs.String("password", "", "redis password")
	queue := fs.String("queue", "default", "run: queue name")
	timeout := fs.Duration("timeout", 10*time.Second, "run: how long to serve")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	opt := asynq.RedisClientOpt{Addr: *addr, DB: *db, Password: *password}
	switch os.Args[1] {
	case "servers":
		ins := asynq.NewInspector(opt)
		defer ins.Close()
		infos, err := ins.Servers()
		if err != nil {
			fail("servers: %v", err)
		}
		out := []server{}
		for _, s := range infos {
			v := server{ID: s.ID, Host: s.Host, PID: s.PID, Concurrency: s.Concurrency,
				Queues: s.Queues, Strict: s.StrictPriority, Started: unix(s.Started),
				Status: s.Status, Active: []worker{}}
			for _, w := range s.ActiveWorkers {
				v.Active = append(v.Active, worker{w.TaskID, w.TaskType, string(w.TaskPayload),
					w.Queue, unix(w.Started), unix(w.Deadline)})
			}
			out = append(out, v)
		}
		if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"event": "servers",
			"servers": out}); err != nil {
			fail("%v", err)
		}
	case "run":
		srv := asynq.NewServer(opt, asynq.Config{Concurrency: 2, Queues: map[string]int{*queue: 1},
			LogLevel: asynq.ErrorLevel})
		if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
			return nil
		})); err != nil {
			fail("start: %v", err)
		}
		time.Sleep(*timeout)
		srv.Shutdown()
	default:
		fail("unknown subcommand %q", os.Args[1])
	}
}
