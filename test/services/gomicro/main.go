// A nats.go `micro` service instance, as an application built on Debian's nats.go (golang-github-nats-io-go-nats-dev,
// 1.22: the experimental micro API, whose $SRV.INFO answer has one `subject` and no `type`), for
// test/services/services.test.ts: the node holding this connection must register it in `ub_services`.
//
// usage: gomicro URL USER PASS CA_FILE INBOX_PREFIX
// Prints "ID <instance id>" once the service is added; stops the service and closes the connection when stdin
// closes (the test ends it by closing stdin, and kills it by its PID if it does not exit).
package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: gomicro URL USER PASS CA_FILE INBOX_PREFIX")
		os.Exit(2)
	}
	nc, err := nats.Connect(os.Args[1], nats.UserInfo(os.Args[2], os.Args[3]), nats.RootCAs(os.Args[4]), nats.CustomInboxPrefix(os.Args[5]), nats.NoReconnect())
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "orders",
		Version:     "4.0.0",
		Description: "order intake in Go",
		Endpoint: micro.Endpoint{
			Subject: "orders.go.create",
			Handler: func(r *micro.Request) { _ = r.Respond([]byte("ok")) },
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "micro.AddService:", err)
		os.Exit(1)
	}
	fmt.Printf("ID %s\n", svc.Info().ID)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
	}
	_ = svc.Stop()
	nc.Close()
}
