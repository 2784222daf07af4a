// The Go side of bench:efficiency: server-bound load through the standard Go client (nats.go 1.22, as Debian
// packages it), the same against membershipd and nats-server. Prints one line `RESULT {json}`.
//
// Usage:
//   effgo pubsub <url> <ca file> <user> <password> <messages> <payload bytes>
//   effgo kvput  <url> <ca file> <user> <password> <bucket> <puts> <in flight> <value bytes> <key prefix>
// Built offline in GOPATH mode: GOPATH=/usr/share/gocode GO111MODULE=off go build -o effgo main.go
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(2)
}

func number(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > 100_000_000 {
		fail("argument "+s, fmt.Errorf("want a positive integer up to 1e8"))
	}
	return n
}

func connect(url, ca, user, pass, name string) *nats.Conn {
	nc, err := nats.Connect(url, nats.RootCAs(ca), nats.UserInfo(user, pass), nats.Name(name),
		nats.Timeout(20*time.Second), nats.MaxReconnects(0))
	if err != nil {
		fail("connect "+url, err)
	}
	return nc
}

func emit(v map[string]interface{}) {
	b, _ := json.Marshal(v)
	fmt.Printf("RESULT %s\n", b)
}

// pubsub: one publisher and one subscriber connection on the same server; msgs/s from the first publish to the
// last delivery. The publisher flushes (a PING/PONG round trip) every 10,000 messages so that neither server's
// slow-consumer protection decides the figure.
func pubsub(url, ca, user, pass string, count, size int) {
	sub := connect(url, ca, user, pass, "effgo-sub")
	defer sub.Close()
	pub := connect(url, ca, user, pass, "effgo-pub")
	defer pub.Close()
	var received int64
	done := make(chan struct{})
	s, err := sub.Subscribe("eff.pubsub", func(*nats.Msg) {
		if atomic.AddInt64(&received, 1) == int64(count) {
			close(done)
		}
	})
	if err != nil {
		fail("subscribe", err)
	}
	_ = s.SetPendingLimits(-1, -1)
	if err := sub.Flush(); err != nil {
		fail("flush sub", err)
	}
	// Interest is local to the server both clients use; a round trip on the publisher's connection is enough.
	if err := pub.Flush(); err != nil {
		fail("flush pub", err)
	}
	payload := make([]byte, size)
	start := time.Now()
	for i := 0; i < count; i++ {
		if err := pub.Publish("eff.pubsub", payload); err != nil {
			fail("publish", err)
		}
		if i%10000 == 9999 {
			if err := pub.FlushTimeout(20 * time.Second); err != nil {
				fail("flush", err)
			}
		}
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	secs := time.Since(start).Seconds()
	got := atomic.LoadInt64(&received)
	emit(map[string]interface{}{"received": got, "seconds": secs, "rate": float64(got) / secs})
}

// kvput: `inflight` goroutines each putting in turn over one connection (the KV API's put is a request), keys
// cycling through 10,000 per prefix so the bucket stays bounded; puts/s.
func kvput(url, ca, user, pass, bucket string, puts, inflight, size int, prefix string) {
	nc := connect(url, ca, user, pass, "effgo-kv")
	defer nc.Close()
	js, err := nc.JetStream(nats.MaxWait(30 * time.Second))
	if err != nil {
		fail("jetstream", err)
	}
	kv, err := js.KeyValue(bucket)
	if err != nil {
		fail("open bucket "+bucket, err)
	}
	value := make([]byte, size)
	var next, failed int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(120 * time.Second)
	for w := 0; w < inflight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := atomic.AddInt64(&next, 1)
				if i > int64(puts) {
					return
				}
				if _, err := kv.Put(fmt.Sprintf("%s.%d", prefix, i%10000), value); err != nil {
					if atomic.AddInt64(&failed, 1) == 1 {
						fmt.Fprintf(os.Stderr, "put: %v\n", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	done := atomic.LoadInt64(&next)
	if done > int64(puts) {
		done = int64(puts)
	}
	ok := done - atomic.LoadInt64(&failed)
	emit(map[string]interface{}{"puts": ok, "failed": failed, "seconds": secs, "rate": float64(ok) / secs})
}

func main() {
	if len(os.Args) < 2 {
		fail("usage", fmt.Errorf("effgo pubsub|kvput …"))
	}
	a := os.Args
	switch {
	case a[1] == "pubsub" && len(a) == 8:
		pubsub(a[2], a[3], a[4], a[5], number(a[6]), number(a[7]))
	case a[1] == "kvput" && len(a) == 11:
		kvput(a[2], a[3], a[4], a[5], a[6], number(a[7]), number(a[8]), number(a[9]), a[10])
	default:
		fail("usage", fmt.Errorf("effgo pubsub <url> <ca> <user> <pass> <msgs> <size> | kvput <url> <ca> <user> <pass> <bucket> <puts> <inflight> <size> <prefix>"))
	}
}
