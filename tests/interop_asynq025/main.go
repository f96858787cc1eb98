// Command interop_asynq025 reads a queue with asynq v0.25.1's Inspector (Go apps not yet on
// v0.26 read scores as whole seconds and failed on fractional ones).
//
// Usage: interop_asynq025 inspect -addr host:port -db N -queue Q [-ids id1,id2,...]
//
// Prints one JSON line: every state's list and, for each -ids entry, GetTaskInfo's view.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hibiken/asynq"
)

type taskView struct {
	ID            string  `json:"id"`
	Type          string  `json:"type"`
	Payload       string  `json:"payload"`
	State         string  `json:"state"`
	Queue         string  `json:"queue"`
	Retried       int     `json:"retried"`
	MaxRetry      int     `json:"max_retry"`
	LastErr       string  `json:"last_err"`
	NextProcessAt float64 `json:"next_process_at"`
	LastFailedAt  float64 `json:"last_failed_at"`
	CompletedAt   float64 `json:"completed_at"`
	Retention     float64 `json:"retention"`
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func view(t *asynq.TaskInfo) taskView {
	return taskView{t.ID, t.Type, string(t.Payload), t.State.String(), t.Queue, t.Retried,
		t.MaxRetry, t.LastErr, unix(t.NextProcessAt), unix(t.LastFailedAt), unix(t.CompletedAt),
		t.Retention.Seconds()}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] != "inspect" {
		fail("usage: interop_asynq025 inspect [flags]")
	}
	fs := flag.NewFlagSet("inspect", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:6379", "redis address")
	db := fs.Int("db", 0, "redis db")
	password := fs.String("password", "", "redis password")
	queue := fs.String("queue", "default", "queue name")
	ids := fs.String("ids", "", "comma-separated task ids for GetTaskInfo")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	ins := asynq.NewInspector(asynq.RedisClientOpt{Addr: *addr, DB: *db, Password: *password})
	defer ins.Close()
	lists := map[string]func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		"pending": ins.ListPendingTasks, "active": ins.ListActiveTasks,
		"scheduled": ins.ListScheduledTasks, "retry": ins.ListRetryTasks,
		"archived": ins.ListArchivedTasks, "completed": ins.ListCompletedTasks,
	}
	out := map[string]any{"event": "inspect"}
	tasks := map[string][]taskView{}
	errs := map[string]string{}
	for name, list := range lists {
		ts, err := list(*queue, asynq.PageSize(1000))
		if err != nil {
			errs[name] = err.Error()
			continue
		}
		vs := []taskView{}
		for _, t := range ts {
			vs = append(vs, view(t))
		}
		tasks[name] = vs
	}
	infos := map[string]taskView{}
	if *ids != "" {
		for _, id := range strings.Split(*ids, ",") {
			t, err := ins.GetTaskInfo(*queue, id)
			if err != nil {
				errs["get:"+id] = err.Error()
				continue
			}
			infos[id] = view(t)
		}
	}
	qi, err := ins.GetQueueInfo(*queue)
	if err != nil {
		errs["queue_info"] = err.Error()
	} else {
		out["counts"] = map[string]int{"pending": qi.Pending, "active": qi.Active,
			"scheduled": qi.Scheduled, "retry": qi.Retry, "archived": qi.Archived,
			"completed": qi.Completed}
	}
	out["tasks"], out["info"], out["errors"] = tasks, infos, errs
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("%v", err)
	}
}
