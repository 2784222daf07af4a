// The differential client of test/kv/kv_e2e.test.ts: one fixed session of core NATS and KV calls through the
// standard Go client (nats.go 1.22, as Debian packages it), printed one observation per line. The tap test runs
// it against nats-server and against membershipd and requires the same lines, revisions included.
//
// Usage: gokv <nats url> <bucket prefix>
// Built offline in GOPATH mode: GOPATH=/usr/share/gocode GO111MODULE=off go build -o gokv main.go
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

var out []string

func say(format string, args ...interface{}) {
	out = append(out, fmt.Sprintf(format, args...))
}

// errText names an error by what a Go application compares: the sentinel it matches, or the API error code.
func errText(err error) string {
	if err == nil {
		return "ok"
	}
	var api *nats.APIError
	if errors.As(err, &api) {
		return fmt.Sprintf("api %d/%d %s", api.Code, api.ErrorCode, api.Description)
	}
	for _, s := range []error{nats.ErrKeyNotFound, nats.ErrKeyExists, nats.ErrNoResponders, nats.ErrStreamNameAlreadyInUse, nats.ErrKeyDeleted} {
		if errors.Is(err, s) {
			return "is " + s.Error()
		}
	}
	return "other " + err.Error()
}

func must(what string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(2)
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gokv <nats url> <bucket prefix>")
		os.Exit(2)
	}
	url, p := os.Args[1], os.Args[2]
	nc, err := nats.Connect(url, nats.Timeout(20*time.Second))
	must("connect", err)
	defer nc.Close()
	core(nc, p)
	js, err := nc.JetStream(nats.MaxWait(20 * time.Second))
	must("jetstream", err)
	kv(js, p)
	headers(js, p)
	ttl(js, p)
	for _, line := range out {
		fmt.Println(line)
	}
}

func core(nc *nats.Conn, p string) {
	sub, err := nc.Subscribe(p+".echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte("echo:"), m.Data...)
		r.Header.Set("X-Seen", m.Header.Get("X-In"))
		_ = m.RespondMsg(r)
	})
	must("subscribe", err)
	defer func() { _ = sub.Unsubscribe() }()
	req := nats.NewMsg(p + ".echo")
	req.Data = []byte("hi")
	req.Header.Set("X-In", "1")
	resp, err := nc.RequestMsg(req, 10*time.Second)
	if err == nil {
		say("core request %s header %s", resp.Data, resp.Header.Get("X-Seen"))
	} else {
		say("core request %s", errText(err))
	}
	_, err = nc.Request(p+".nobody", []byte("x"), 10*time.Second)
	say("core no responders: %s", errText(err))
	got := make(chan string, 4)
	q1, _ := nc.QueueSubscribe(p+".q", "g", func(m *nats.Msg) { got <- "1" })
	q2, _ := nc.QueueSubscribe(p+".q", "g", func(m *nats.Msg) { got <- "2" })
	_ = nc.Flush()
	_ = nc.Publish(p+".q", []byte("x"))
	_ = nc.Flush()
	select {
	case <-got:
		say("core queue group: delivered")
	case <-time.After(10 * time.Second):
		say("core queue group: nothing")
	}
	time.Sleep(50 * time.Millisecond) // a second delivery would have arrived by now (none is expected)
	say("core queue group extra deliveries: %d", len(got))
	_ = q1.Unsubscribe()
	_ = q2.Unsubscribe()
}

func status(kv nats.KeyValue, what string) {
	st, err := kv.Status()
	if err != nil {
		say("%s status %s", what, errText(err))
		return
	}
	si := st.(*nats.KeyValueBucketStatus).StreamInfo()
	say("%s status values=%d history=%d bytes=%d ttl=%s first=%d last=%d cluster=%v", what, st.Values(), st.History(), st.Bytes(), st.TTL(),
		si.State.FirstSeq, si.State.LastSeq, si.Cluster != nil)
}

func history(kv nats.KeyValue, key string) string {
	h, err := kv.History(key)
	if err != nil {
		return errText(err)
	}
	parts := []string{}
	for _, e := range h {
		parts = append(parts, fmt.Sprintf("%s:%s:%d", e.Operation(), e.Value(), e.Revision()))
	}
	return strings.Join(parts, ",")
}

func kv(js nats.JetStreamContext, p string) {
	before, err := js.AccountInfo()
	must("account info", err)
	a, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: p + "_a", History: 3})
	must("create a", err)
	b, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: p + "_b"})
	must("create b", err)
	after, err := js.AccountInfo()
	must("account info", err)
	say("account info streams +%d", after.Streams-before.Streams)
	// Two buckets written in turn: each counts its own revisions.
	for i := 0; i < 3; i++ {
		ra, ea := a.PutString("k", fmt.Sprintf("a%d", i))
		rb, eb := b.PutString("k", fmt.Sprintf("b%d", i))
		say("put in turn %d %s %d %s", ra, errText(ea), rb, errText(eb))
	}
	// The "bucket already exists" path: nats.go compares the config it sends with the one it reads back.
	_, err = js.CreateKeyValue(&nats.KeyValueConfig{Bucket: p + "_a", History: 3})
	say("create again: %s", errText(err))
	si, err := js.StreamInfo("KV_" + p + "_a")
	must("stream info", err)
	cfg, _ := json.Marshal(si.Config)
	say("stream config %s", strings.ReplaceAll(string(cfg), p, "P"))
	r, err := a.Create("k", []byte("x"))
	say("create existing %d %s", r, errText(err))
	r, err = a.Update("k", []byte("u"), 3)
	say("update at 3 %d %s", r, errText(err))
	r, err = a.Update("k", []byte("u"), 3)
	say("update stale %d %s", r, errText(err))
	say("delete %s", errText(a.Delete("k")))
	_, err = a.Get("k")
	say("get deleted %s", errText(err))
	r, err = a.Create("k", []byte("again"))
	say("create after delete %d %s", r, errText(err))
	_, _ = a.PutString("x.y", "1")
	say("purge %s", errText(a.Purge("x.y")))
	say("history k %s", history(a, "k"))
	say("history x.y %s", history(a, "x.y"))
	keys, err := a.Keys()
	sort.Strings(keys)
	say("keys %v %s", keys, errText(err))
	w, err := a.WatchAll()
	must("watch", err)
	seen := []string{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		seen = append(seen, fmt.Sprintf("%s:%s:%s:%d:%d", e.Key(), e.Operation(), e.Value(), e.Revision(), e.Delta()))
	}
	_ = w.Stop()
	sort.Strings(seen)
	say("watch initial %v", seen)
	status(a, "a")
	say("purge deletes %s", errText(a.PurgeDeletes(nats.DeleteMarkersOlderThan(-1))))
	status(a, "a after purge deletes")
	say("history x.y after %s", history(a, "x.y"))
	status(b, "b")
}

func headers(js nats.JetStreamContext, p string) {
	subject := "$KV." + p + "_b.m"
	for i, opts := range [][]nats.PubOpt{
		{nats.MsgId("id1")}, {nats.MsgId("id1")}, {nats.ExpectLastSequence(1)}, {nats.ExpectLastSequence(5)},
		{nats.ExpectLastSequencePerSubject(0)}, {nats.ExpectStream("KV_nope")}, {nats.ExpectStream("KV_" + p + "_b"), nats.MsgId("id2")},
	} {
		pa, err := js.Publish(subject, []byte(fmt.Sprintf("v%d", i)), opts...)
		if err != nil {
			say("publish %d %s", i, errText(err))
		} else {
			say("publish %d seq=%d duplicate=%v", i, pa.Sequence, pa.Duplicate)
		}
	}
	err := js.PurgeStream("KV_"+p+"_b", &nats.StreamPurgeRequest{Subject: subject, Keep: 1})
	say("purge stream filter keep 1: %s", errText(err))
	si, err := js.StreamInfo("KV_" + p + "_b")
	must("stream info", err)
	say("after purge messages=%d first=%d last=%d", si.State.Msgs, si.State.FirstSeq, si.State.LastSeq)
}

func ttl(js nats.JetStreamContext, p string) {
	kv, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: p + "_ttl", TTL: 300 * time.Millisecond})
	must("create ttl", err)
	r, err := kv.PutString("t", "1")
	say("ttl put %d %s", r, errText(err))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err = kv.Get("t"); errors.Is(err, nats.ErrKeyNotFound) {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	say("ttl expired: %s", errText(err))
	status(kv, "ttl")
}
