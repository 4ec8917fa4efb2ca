// Command bytepipe is the cheapest possible Go proxy, for
// bench/passthrough.sh (PIPE=1): it accepts TCP connections and copies bytes
// to and from the upstream server with two goroutines per connection,
// understanding nothing of the protocol. It shows how much of pgcloak's
// cost against pgbouncer is Go's network I/O rather than pgcloak.
//
//	bytepipe -upstream 127.0.0.1:5432
//
// It listens on a free 127.0.0.1 port, prints PORT=<n> on stdout and serves
// until it is killed.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
)

func main() {
	upstream := flag.String("upstream", "", "host:port of the server to copy bytes to")
	flag.Parse()
	if *upstream == "" {
		log.Fatal("bytepipe: -upstream is required")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("PORT=%d\n", ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go pipe(c, *upstream)
	}
}

func pipe(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
}
