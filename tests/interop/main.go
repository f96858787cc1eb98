// Command interop drives Go's asynq against queues written by unifiedq's redis:// driver.
//
// Subcommands (all print JSON lines on stdout; the pytest side parses them):
//
//	consume   run an asynq.Server on one queue until -count tasks finished (ok or archived)
//	produce   enqueue tasks with asynq.Client
//	inspect   print asynq.Inspector's view of a queue
//	pause     pause the queue with asynq.Inspector.PauseQueue
//	unpause   resume it with asynq.Inspector.UnpauseQueue
//	taskinfo  print asynq.Inspector.GetTaskInfo(queue, -id): state, result, last error
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

	"github.com/hibiken/asynq"
)

type event struct {
	Event    string            `json:"event"`
	ID       string            `json:"id,omitempty"`
	Type     string            `json:"type,omitempty"`
	Payload  string            `json:"payload,omitempty"`
	Headers  map[string]string `json:"headers,omitempty"`
	Retried  int               `json:"retried"`
	MaxRetry int               `json:"max_retry"`
	At       float64           `json:"at,omitempty"`
	Queue    string            `json:"queue,omitempty"`
}

var out = json.NewEncoder(os.Stdout)
var outMu sync.Mutex

func emit(v any) {
	outMu.Lock()
	defer outMu.Unlock()
	if err := out.Encode(v); err != nil {
		panic(err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

// redisOpt is one server's options, or with cluster a Redis Cluster's (addr: the seed nodes,
// comma-separated; asynq.RedisClusterClientOpt).
func redisOpt(addr string, db int, password string, cluster bool) asynq.RedisConnOpt {
	if cluster {
		return asynq.RedisClusterClientOpt{Addrs: strings.Split(addr, ","), Password: password}
	}
	return asynq.RedisClientOpt{Addr: addr, DB: db, Password: password}
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// unixOrZero is t in Unix seconds, or 0 for the zero time (no deadline).
func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// consume runs a server. Tasks of type "interop:fail" always fail (so they are retried and
// then archived); tasks of type "interop:result" write "go:<payload>" with their
// ResultWriter; every other task succeeds. It exits after -count tasks reached a final state.
func consume(opt asynq.RedisConnOpt, queue string, count int, timeout time.Duration) {
	var mu sync.Mutex
	final := 0
	done := make(chan struct{})
	finish := func() {
		mu.Lock()
		defer mu.Unlock()
		final++
		if final == count {
			close(done)
		}
	}
	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency:              4,
		Queues:                   map[string]int{queue: 1},
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return 50 * time.Millisecond },
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		TaskCheckInterval:        50 * time.Millisecond,
		LogLevel:                 asynq.ErrorLevel,
		ShutdownTimeout:          2 * time.Second,
	})
	handler := asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		retried, _ := asynq.GetRetryCount(ctx)
		maxRetry, _ := asynq.GetMaxRetry(ctx)
		q, _ := asynq.GetQueueName(ctx)
		emit(event{Event: "run", ID: id, Type: t.Type(), Payload: string(t.Payload()),
			Headers: t.Headers(), Retried: retried, MaxRetry: maxRetry, At: now(), Queue: q})
		if t.Type() == "interop:fail" {
			if retried >= maxRetry {
				defer finish()
			}
			return errors.New("interop: asked to fail")
		}
		defer finish()
		if t.Type() == "interop:result" {
			if _, err := t.ResultWriter().Write([]byte("go:" + string(t.Payload()))); err != nil {
				return err
			}
		}
		return nil
	})
	if err := srv.Start(handler); err != nil {
		fail("start server: %v", err)
	}
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Shutdown()
		fail("timed out after %v with %d of %d tasks final", timeout, final, count)
	}
	// Let the last Done/Archive write land before shutting down.
	time.Sleep(200 * time.Millisecond)
	srv.Shutdown()
	emit(map[string]any{"event": "stopped"})
}

// produce enqueues n tasks: type "interop:go", payload "go-<i>", header "seq"=i; extra
// options (asynq.Timeout, asynq.Deadline) go to every task.
func produce(opt asynq.RedisConnOpt, queue string, n int, extra ...asynq.Option) {
	c := asynq.NewClient(opt)
	defer c.Close()
	for i := 0; i < n; i++ {
		t := asynq.NewTaskWithHeaders("interop:go", []byte(fmt.Sprintf("go-%d", i)),
			map[string]string{"seq": fmt.Sprint(i), "origin": "go"})
		info, err := c.Enqueue(t, append([]asynq.Option{asynq.Queue(queue), asynq.MaxRetry(3)},
			extra...)...)
		if err != nil {
			fail("enqueue: %v", err)
		}
		emit(event{Event: "enqueued", ID: info.ID, Type: info.Type, Payload: string(info.Payload),
			Queue: info.Queue, MaxRetry: info.MaxRetry})
	}
}

type taskView struct {
	ID      string            `json:"id"`
	Type    string            `json:"type"`
	Payload string            `json:"payload"`
	Headers map[string]string `json:"headers,omitempty"`
	State   string            `json:"state"`
	Retried int               `json:"retried"`
	MaxRet  int               `json:"max_retry"`
	LastErr string            `json:"last_err,omitempty"`
	Orphan  bool              `json:"orphaned,omitempty"`
}

func view(ts []*asynq.TaskInfo) []taskView {
	vs := []taskView{}
	for _, t := range ts {
		vs = append(vs, taskView{t.ID, t.Type, string(t.Payload), t.Headers, t.State.String(),
			t.Retried, t.MaxRetry, t.LastErr, t.IsOrphaned})
	}
	return vs
}

func inspect(opt asynq.RedisConnOpt, queue string) {
	ins := asynq.NewInspector(opt)
	defer ins.Close()
	qi, err := ins.GetQueueInfo(queue)
	if err != nil {
		fail("queue info: %v", err)
	}
	lists := map[string]func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		"pending": ins.ListPendingTasks, "active": ins.ListActiveTasks,
		"scheduled": ins.ListScheduledTasks, "retry": ins.ListRetryTasks,
		"archived": ins.ListArchivedTasks, "completed": ins.ListCompletedTasks,
	}
	tasks := map[string][]taskView{}
	for name, list := range lists {
		ts, err := list(queue, asynq.PageSize(1000))
		if err != nil {
			fail("list %s: %v", name, err)
		}
		tasks[name] = view(ts)
	}
	queues, err := ins.Queues()
	if err != nil {
		fail("queues: %v", err)
	}
	emit(map[string]any{
		"event": "inspect", "queues": queues, "size": qi.Size, "pending": qi.Pending,
		"active": qi.Active, "scheduled": qi.Scheduled, "retry": qi.Retry,
		"archived": qi.Archived, "completed": qi.Completed, "processed": qi.ProcessedTotal,
		"failed": qi.FailedTotal, "paused": qi.Paused, "tasks": tasks,
	})
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop consume|produce|inspect [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:6379", "redis address")
	db := fs.Int("db", 0, "redis db")
	password := fs.String("password", "", "redis password")
	cluster := fs.Bool("cluster", false, "addr lists Redis Cluster seed nodes (comma-separated)")
	queue := fs.String("queue", "default", "queue name")
	count := fs.Int("count", 1, "consume: tasks to finish; produce: tasks to enqueue")
	timeout := fs.Duration("timeout", 60*time.Second, "consume: give up after this long")
	id := fs.String("id", "", "taskinfo: the task id")
	taskTimeout := fs.Duration("task-timeout", 0, "produce: asynq.Timeout of every task")
	taskDeadline := fs.Int64("task-deadline", 0, "produce: asynq.Deadline (Unix seconds)")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	opt := redisOpt(*addr, *db, *password, *cluster)
	switch os.Args[1] {
	case "consume":
		consume(opt, *queue, *count, *timeout)
	case "produce":
		var extra []asynq.Option
		if *taskTimeout > 0 {
			extra = append(extra, asynq.Timeout(*taskTimeout))
		}
		if *taskDeadline > 0 {
			extra = append(extra, asynq.Deadline(time.Unix(*taskDeadline, 0)))
		}
		produce(opt, *queue, *count, extra...)
	case "inspect":
		inspect(opt, *queue)
	case "taskinfo":
		ins := asynq.NewInspector(opt)
		defer ins.Close()
		info, err := ins.GetTaskInfo(*queue, *id)
		if err != nil {
			fail("taskinfo: %v", err)
		}
		emit(map[string]any{"event": "taskinfo", "id": info.ID, "state": info.State.String(),
			"result": string(info.Result), "last_err": info.LastErr,
			"retention": info.Retention.Seconds(), "completed_at": info.CompletedAt.Unix(),
			"timeout": info.Timeout.Seconds(), "deadline": unixOrZero(info.Deadline)})
	case "pause", "unpause":
		ins := asynq.NewInspector(opt)
		defer ins.Close()
		op := ins.PauseQueue
		if os.Args[1] == "unpause" {
			op = ins.UnpauseQueue
		}
		if err := op(*queue); err != nil {
			fail("%s: %v", os.Args[1], err)
		}
		emit(map[string]any{"event": os.Args[1], "queue": *queue})
	default:
		fail("unknown subcommand %q", os.Args[1])
	}
}
