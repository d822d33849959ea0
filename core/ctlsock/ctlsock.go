// Package ctlsock is the daemons' control socket: a unix socket, mode
// 0600 (root only), one JSON request and one JSON answer per connection,
// the request bounded in size and time. usbback serves vportctl on it,
// usbfront serves `usbfront list`.
package ctlsock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// MaxRequest bounds a request; anything longer is refused.
const MaxRequest = 4096

// Listen opens the socket at path, mode 0600, replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve answers requests on l until ctx ends: handle gets each request's
// bytes (a JSON object, at most MaxRequest) and returns what to encode
// back; a request that is too long or not JSON gets {"error": …}.
func Serve(ctx context.Context, l net.Listener, handle func(req []byte) any) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go answer(c, handle)
	}
}

type errorReply struct {
	Error string `json:"error"`
}

func answer(c net.Conn, handle func([]byte) any) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(&limitedReader{c, MaxRequest}, MaxRequest).ReadBytes('\n')
	var rsp any
	switch {
	case err != nil && len(line) == 0:
		rsp = errorReply{"empty or oversized request"}
	case !json.Valid(line):
		rsp = errorReply{"request is not JSON"}
	default:
		rsp = handle(line)
	}
	_ = json.NewEncoder(c).Encode(rsp)
}

type limitedReader struct {
	c net.Conn
	n int
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

// Call sends req to the daemon at path and decodes its answer into rsp.
func Call(path string, req, rsp any) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("reach the daemon at %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err
	}
	if err := json.NewDecoder(c).Decode(rsp); err != nil {
		return fmt.Errorf("the daemon's answer: %w", err)
	}
	return nil
}
