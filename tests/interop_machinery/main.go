// Command interop_machinery is a Go Machinery v1 (github.com/RichardKnop/machinery v1.10.8)
// program for unifiedq's interop tests (tests/test_machinery.py), with Machinery's stock
// configuration: config.NewFromEnvironment(), so every setting is Machinery's default
// (exchange machinery_exchange, direct, binding key machinery_task, queue machinery_tasks,
// AMQP result backend) except BROKER and RESULT_BACKEND, which name the test broker.
//
//	worker -count N -out FILE [-timeout 30s]
//	    A Machinery worker with the tasks below registered; each run appends one JSON line
//	    {"task", "uuid", "args", "retry_count", "retry_timeout"} to FILE; exits after N runs.
//	send -name NAME -args JSON [-retry-count K] [-retry-timeout T] [-eta 2s] [-wait 20s]
//	    server.SendTask of one signature (Args as Machinery's [{"Type":..,"Value":..}]);
//	    prints {"uuid": ...}; with -wait, then waits for the task's result in the result
//	    backend (AsyncResult.GetWithTimeout) and prints {"uuid", "results"} or {"uuid",
//	    "error"}.
//	bench-send -name NAME -args JSON -n N
//	    N x server.SendTask (each waits for its publisher confirm, as Machinery does);
//	    prints {"n": N, "seconds": ...} (the benchmark in benchmarks/machinery.py).
//	declare-delay -ms N
//	    Declares the delay queue Machinery's AMQP broker declares for an N ms delay, with its
//	    own code path (common.AMQPConnector.Connect) and argument types.
//
// Tasks: Typed(int64, float64, string, bool, []int64, []string, int32, []byte),
// Echo(string), Fail(string) (always returns an error: Machinery's retry rules apply),
// Add(int64, int64) int64 (a result for the result backend).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	machinery "github.com/RichardKnop/machinery/v1"
	"github.com/RichardKnop/machinery/v1/common"
	"github.com/RichardKnop/machinery/v1/config"
	mlog "github.com/RichardKnop/machinery/v1/log"
	"github.com/RichardKnop/machinery/v1/tasks"
	amqp "github.com/rabbitmq/amqp091-go"
)

type recorder struct {
	mu    sync.Mutex
	out   *os.File
	n     int
	count int
	done  chan struct{}
}

func (r *recorder) record(ctx context.Context, task string, args ...interface{}) {
	sig := tasks.SignatureFromContext(ctx)
	line, _ := json.Marshal(map[string]any{
		"task": task, "uuid": sig.UUID, "args": args,
		"retry_count": sig.RetryCount, "retry_timeout": sig.RetryTimeout,
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.out.Write(append(line, '\n'))
	_ = r.out.Sync()
	r.n++
	if r.n == r.count {
		close(r.done)
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: interop_machinery worker|send|declare-delay [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	count := fs.Int("count", 1, "worker: exit after this many task runs")
	outPath := fs.String("out", "", "worker: file the JSON lines are appended to")
	timeout := fs.Duration("timeout", 30*time.Second, "worker: give up after this long")
	name := fs.String("name", "", "send: task name")
	args := fs.String("args", "[]", "send: the signature's Args as JSON")
	retryCount := fs.Int("retry-count", 0, "send: RetryCount")
	retryTimeout := fs.Int("retry-timeout", 0, "send: RetryTimeout (seconds)")
	eta := fs.Duration("eta", 0, "send: ETA this long from now")
	wait := fs.Duration("wait", 0, "send: wait this long for the task's result")
	ms := fs.Int64("ms", 1000, "declare-delay: the delay in milliseconds")
	n := fs.Int("n", 100, "bench-send: tasks to send")
	_ = fs.Parse(os.Args[2:])

	mlog.Set(stderrLogger{}) // stdout carries the JSON answers only
	cnf, err := config.NewFromEnvironment()
	if err != nil {
		fail("config: %v", err)
	}
	server, err := machinery.NewServer(cnf)
	if err != nil {
		fail("server: %v", err)
	}

	switch os.Args[1] {
	case "worker":
		f, err := os.OpenFile(*outPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fail("out: %v", err)
		}
		r := &recorder{out: f, count: *count, done: make(chan struct{})}
		err = server.RegisterTasks(map[string]interface{}{
			"Typed": func(ctx context.Context, a int64, b float64, c string, d bool, e []int64,
				g []string, h int32, i []byte) error {
				r.record(ctx, "Typed", a, b, c, d, e, g, h, string(i))
				return nil
			},
			"Echo": func(ctx context.Context, s string) error {
				r.record(ctx, "Echo", s)
				return nil
			},
			"Add": func(ctx context.Context, a, b int64) (int64, error) {
				r.record(ctx, "Add", a, b)
				return a + b, nil
			},
			"Fail": func(ctx context.Context, s string) error {
				r.record(ctx, "Fail", s)
				return errors.New("failing on purpose")
			},
		})
		if err != nil {
			fail("register: %v", err)
		}
		w := server.NewWorker("interop", 1)
		errs := make(chan error, 1)
		w.LaunchAsync(errs)
		select {
		case <-r.done:
			time.Sleep(300 * time.Millisecond) // the last ack (and retry publish) goes out
			w.Quit()
		case err := <-errs:
			fail("worker: %v", err)
		case <-time.After(*timeout):
			fail("timeout: %d of %d task runs", r.n, *count)
		}
	case "send":
		var a []tasks.Arg
		if err := json.Unmarshal([]byte(*args), &a); err != nil {
			fail("-args: %v", err)
		}
		sig, err := tasks.NewSignature(*name, a)
		if err != nil {
			fail("signature: %v", err)
		}
		sig.RetryCount, sig.RetryTimeout = *retryCount, *retryTimeout
		if *eta > 0 {
			t := time.Now().UTC().Add(*eta)
			sig.ETA = &t
		}
		res, err := server.SendTask(sig)
		if err != nil {
			fail("send: %v", err)
		}
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"uuid": sig.UUID})
		if *wait > 0 {
			values, err := res.GetWithTimeout(*wait, 50*time.Millisecond)
			if err != nil {
				_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
					"uuid": sig.UUID, "error": err.Error()})
				return
			}
			out := []any{}
			for _, v := range values {
				out = append(out, v.Interface())
			}
			_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
				"uuid": sig.UUID, "results": out})
		}
	case "bench-send":
		var a []tasks.Arg
		if err := json.Unmarshal([]byte(*args), &a); err != nil {
			fail("-args: %v", err)
		}
		send := func() {
			sig, _ := tasks.NewSignature(*name, a)
			if _, err := server.SendTask(sig); err != nil {
				fail("send: %v", err)
			}
		}
		send() // opens and caches the connection, declares the queue: not timed
		start := time.Now()
		for i := 0; i < *n; i++ {
			send()
		}
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
			"n": *n, "seconds": time.Since(start).Seconds()})
	case "declare-delay":
		// brokers/amqp/amqp.go delay(), without a configured DelayedQueue.
		key := cnf.AMQP.BindingKey
		queue := fmt.Sprintf("delay.%d.%s.%s", *ms, cnf.AMQP.Exchange, key)
		conn, ch, _, _, _, err := (&common.AMQPConnector{}).Connect(
			cnf.Broker, cnf.MultipleBrokerSeparator, cnf.TLSConfig, cnf.AMQP.Exchange,
			cnf.AMQP.ExchangeType, queue, true, cnf.AMQP.AutoDelete, queue, nil,
			amqp.Table{
				"x-dead-letter-exchange":    cnf.AMQP.Exchange,
				"x-dead-letter-routing-key": key,
				"x-message-ttl":             *ms,
				"x-expires":                 *ms * 2,
			}, amqp.Table(cnf.AMQP.QueueBindingArgs))
		if err != nil {
			fail("declare: %v", err)
		}
		_ = ch.Close()
		_ = conn.Close()
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"queue": queue})
	default:
		fail("unknown command %q", os.Args[1])
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

type stderrLogger struct{}

func (stderrLogger) Print(v ...interface{}) { fmt.Fprint(os.Stderr, v...) }
func (stderrLogger) Printf(f string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", v...)
}
func (stderrLogger) Println(v ...interface{}) { fmt.Fprintln(os.Stderr, v...) }
func (stderrLogger) Fatal(v ...interface{})   { fmt.Fprintln(os.Stderr, v...); os.Exit(1) }
func (stderrLogger) Fatalf(f string, v ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", v...)
	os.Exit(1)
}
func (stderrLogger) Fatalln(v ...interface{}) { fmt.Fprintln(os.Stderr, v...); os.Exit(1) }
func (stderrLogger) Panic(v ...interface{})   { panic(fmt.Sprint(v...)) }
func (stderrLogger) Panicf(f string, v ...interface{}) {
	panic(fmt.Sprintf(f, v...))
}
func (stderrLogger) Panicln(v ...interface{}) { panic(fmt.Sprintln(v...)) }
