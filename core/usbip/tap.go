package usbip

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Tap records the first bytes each way of one USB/IP connection: what
// the peer sent (the guest kernel's vhci-hcd: CMD_SUBMIT, CMD_UNLINK) and
// what we answered. The lab keeps these captures of a real kernel, and
// the tests decode and replay them (testdata/vhci), so the kernel's own
// encoder is the oracle for ours. Wrap the connection before Serve.
type Tap struct {
	conn  io.ReadWriteCloser
	path  string
	limit int

	mu      sync.Mutex
	in, out []byte
	saved   bool
	err     error
}

// NewTap wraps conn; the capture goes to path+".cmd" (what the peer sent)
// and path+".ret" (what we sent), at most limit bytes each, written once
// both are full or when the connection closes, whichever comes first.
func NewTap(conn io.ReadWriteCloser, path string, limit int) *Tap {
	return &Tap{conn: conn, path: path, limit: limit}
}

// Read reads from the connection and records what came in.
func (t *Tap) Read(p []byte) (int, error) {
	n, err := t.conn.Read(p)
	t.record(&t.in, p[:n])
	return n, err
}

// Write records what goes out and writes it.
func (t *Tap) Write(p []byte) (int, error) {
	t.record(&t.out, p)
	return t.conn.Write(p)
}

// Close saves the capture (if it was not yet) and closes the connection.
func (t *Tap) Close() error {
	return errors.Join(t.Save(), t.conn.Close())
}

// Save writes the capture now if it was not yet, and says whether
// writing it (now or earlier) failed.
func (t *Tap) Save() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.saveLocked()
	return t.err
}

func (t *Tap) record(buf *[]byte, p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.saved {
		return
	}
	if room := t.limit - len(*buf); room > 0 {
		*buf = append(*buf, p[:min(room, len(p))]...)
	}
	if len(t.in) >= t.limit && len(t.out) >= t.limit {
		t.saveLocked()
	}
}

// saveLocked writes both files, each through a rename so that a reader
// never sees half of one.
func (t *Tap) saveLocked() {
	if t.saved {
		return
	}
	t.saved = true
	for _, f := range []struct {
		ext string
		b   []byte
	}{{".cmd", t.in}, {".ret", t.out}} {
		tmp := t.path + f.ext + ".tmp"
		if err := os.WriteFile(tmp, f.b, 0o644); err != nil {
			t.err = fmt.Errorf("save USB/IP capture: %w", err)
			return
		}
		if err := os.Rename(tmp, t.path+f.ext); err != nil {
			t.err = fmt.Errorf("save USB/IP capture: %w", err)
			return
		}
	}
	t.in, t.out = nil, nil
}
