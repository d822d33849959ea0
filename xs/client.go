package xs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
)

// DefaultSocket is xenstored's socket when XENSTORED_PATH is not set.
const DefaultSocket = "/var/run/xenstored/socket"

// DeviceXenbus is the XenStore device inside a domain.
const DeviceXenbus = "/dev/xen/xenbus"

// ErrClosed is returned by requests after the connection ended.
var ErrClosed = errors.New("xenstore: connection closed")

// Client is a XenStore connection. Requests may be issued from many
// goroutines at once; replies are matched by req_id and watch events are
// delivered to their Watch. Safe for concurrent use.
type Client struct {
	conn io.ReadWriteCloser
	wmu  sync.Mutex // one message written at a time

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan Msg
	watches map[string]*Watch // by token
	err     error             // why the connection ended
	done    chan struct{}

	// Handle is the client outside any transaction.
	Handle
}

// SocketPath is $XENSTORED_PATH, else DefaultSocket.
func SocketPath() string {
	if p := os.Getenv("XENSTORED_PATH"); p != "" {
		return p
	}
	return DefaultSocket
}

// Dial connects to a xenstored unix socket ("" = SocketPath()).
func Dial(path string) (*Client, error) {
	if path == "" {
		path = SocketPath()
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to xenstore at %s: %w", path, err)
	}
	return NewClient(conn), nil
}

// OpenDevice opens /dev/xen/xenbus ("" = DeviceXenbus), the XenStore of a
// domain that has no socket. The framing is the same.
func OpenDevice(path string) (*Client, error) {
	if path == "" {
		path = DeviceXenbus
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open xenstore device: %w", err)
	}
	return NewClient(f), nil
}

// Open uses the socket when it exists, else the device.
func Open() (*Client, error) {
	if _, err := os.Stat(SocketPath()); err == nil {
		return Dial("")
	}
	return OpenDevice("")
}

// NewClient runs the protocol over an established connection.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{conn: conn, pending: map[uint32]chan Msg{}, watches: map[string]*Watch{}, done: make(chan struct{}), nextID: 1}
	c.Handle = Handle{c: c}
	go c.readLoop()
	return c
}

// Close ends the connection; pending requests fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) readLoop() {
	var err error
	for {
		var m Msg
		if m, err = ReadMsg(c.conn); err != nil {
			break
		}
		if m.Op == OpWatchEvent {
			c.deliverEvent(m.Payload)
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ReqID]
		delete(c.pending, m.ReqID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m // buffered: never blocks the reader
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		err = ErrClosed
	} else {
		err = fmt.Errorf("%w: %v", ErrClosed, err)
	}
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	ws := c.watches
	c.watches = map[string]*Watch{}
	c.mu.Unlock()
	for _, w := range ws {
		w.q.close()
	}
	close(c.done)
}

func (c *Client) deliverEvent(payload []byte) {
	parts := splitNul(payload)
	if len(parts) < 2 {
		return // malformed event: nothing to route it by
	}
	c.mu.Lock()
	w := c.watches[parts[1]]
	c.mu.Unlock()
	if w != nil {
		w.q.push(Event{Path: parts[0], Token: parts[1]})
	}
}

// roundTrip sends one request and waits for its reply.
func (c *Client) roundTrip(ctx context.Context, op Op, tx uint32, payload []byte) ([]byte, error) {
	ch := make(chan Msg, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	id := c.nextID
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1 // 0 is what watch events carry
	}
	c.pending[id] = ch
	c.mu.Unlock()

	buf, err := AppendMsg(nil, Msg{Op: op, ReqID: id, TxID: tx, Payload: payload})
	if err == nil {
		c.wmu.Lock()
		_, err = c.conn.Write(buf)
		c.wmu.Unlock()
	}
	if err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore %s: %w", op, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			return nil, c.err
		}
		if m.Op == OpError {
			return nil, Errno(trimNul(m.Payload))
		}
		if m.Op != op {
			return nil, fmt.Errorf("xenstore %s: reply of type %s", op, m.Op)
		}
		return m.Payload, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore %s: %w", op, ctx.Err())
	}
}

func trimNul(b []byte) string {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return string(b)
}

// Handle issues requests inside one transaction (TxID 0 = none).
type Handle struct {
	c  *Client
	tx uint32
}

// TxID is the transaction the handle works in, 0 for none.
func (h Handle) TxID() uint32 { return h.tx }

func (h Handle) do(op Op, payload []byte) ([]byte, error) {
	return h.c.roundTrip(context.Background(), op, h.tx, payload)
}

func pathErr(op, path string, err error) error {
	return fmt.Errorf("xenstore %s %s: %w", op, path, err)
}

// Read returns a node's value.
func (h Handle) Read(path string) ([]byte, error) {
	v, err := h.do(OpRead, joinNul(path))
	if err != nil {
		return nil, pathErr("read", path, err)
	}
	return v, nil
}

// ReadString returns a node's value as a string.
func (h Handle) ReadString(path string) (string, error) {
	v, err := h.Read(path)
	return string(v), err
}

// Write sets a node's value, creating it and missing parents.
func (h Handle) Write(path string, value []byte) error {
	p := append(joinNul(path), value...)
	if _, err := h.do(OpWrite, p); err != nil {
		return pathErr("write", path, err)
	}
	return nil
}

// WriteString sets a node's value.
func (h Handle) WriteString(path, value string) error { return h.Write(path, []byte(value)) }

// Mkdir creates a node (and missing parents) with an empty value.
func (h Handle) Mkdir(path string) error {
	if _, err := h.do(OpMkdir, joinNul(path)); err != nil {
		return pathErr("mkdir", path, err)
	}
	return nil
}

// Rm removes a node and its children.
func (h Handle) Rm(path string) error {
	if _, err := h.do(OpRm, joinNul(path)); err != nil {
		return pathErr("rm", path, err)
	}
	return nil
}

// Directory lists a node's children by name.
func (h Handle) Directory(path string) ([]string, error) {
	v, err := h.do(OpDirectory, joinNul(path))
	if err != nil {
		return nil, pathErr("directory", path, err)
	}
	return splitNul(v), nil
}

// GetPerms returns a node's permissions; the first names the owner.
func (h Handle) GetPerms(path string) ([]Perm, error) {
	v, err := h.do(OpGetPerms, joinNul(path))
	if err != nil {
		return nil, pathErr("get-perms", path, err)
	}
	var ps []Perm
	for _, s := range splitNul(v) {
		p, err := ParsePerm(s)
		if err != nil {
			return nil, pathErr("get-perms", path, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// SetPerms replaces a node's permissions; perms[0] is the owner and the
// access of every domain not listed.
func (h Handle) SetPerms(path string, perms ...Perm) error {
	parts := []string{path}
	for _, p := range perms {
		parts = append(parts, p.String())
	}
	if _, err := h.do(OpSetPerms, joinNul(parts...)); err != nil {
		return pathErr("set-perms", path, err)
	}
	return nil
}

// Exists reports whether a node exists (and is readable).
func (h Handle) Exists(path string) (bool, error) {
	_, err := h.Read(path)
	if errors.Is(err, ENOENT) {
		return false, nil
	}
	return err == nil, err
}

// GetDomainPath returns /local/domain/<dom> as the server says it.
func (c *Client) GetDomainPath(dom uint32) (string, error) {
	v, err := c.do(OpGetDomainPath, joinNul(strconv.FormatUint(uint64(dom), 10)))
	if err != nil {
		return "", fmt.Errorf("xenstore get-domain-path %d: %w", dom, err)
	}
	return trimNul(v), nil
}

// IsDomainIntroduced asks whether a domain is known to XenStore (dom0
// only): false once it was released (destroyed, or in the simulator,
// its process gone).
func (c *Client) IsDomainIntroduced(dom uint32) (bool, error) {
	v, err := c.do(OpIsDomainIntroduced, joinNul(strconv.FormatUint(uint64(dom), 10)))
	if err != nil {
		return false, fmt.Errorf("xenstore is-domain-introduced %d: %w", dom, err)
	}
	return trimNul(v) == "T", nil
}

// MaxTransactionRetries bounds Transaction's retries on EAGAIN.
const MaxTransactionRetries = 32

// Transaction runs fn in a transaction and commits it, redoing the whole
// transaction when the commit reports a conflict (EAGAIN). An error from
// fn aborts the transaction and is returned.
func (c *Client) Transaction(ctx context.Context, fn func(tx Handle) error) error {
	for attempt := 0; ; attempt++ {
		v, err := c.roundTrip(ctx, OpTransactionStart, 0, []byte{0})
		if err != nil {
			return fmt.Errorf("xenstore transaction start: %w", err)
		}
		id, err := parseUint(trimNul(v), 0xffffffff)
		if err != nil || id == 0 {
			return fmt.Errorf("xenstore transaction start: bad id %q", v)
		}
		tx := Handle{c: c, tx: uint32(id)}
		if err := fn(tx); err != nil {
			_, _ = c.roundTrip(ctx, OpTransactionEnd, tx.tx, joinNul("F"))
			return err
		}
		_, err = c.roundTrip(ctx, OpTransactionEnd, tx.tx, joinNul("T"))
		if errors.Is(err, EAGAIN) && attempt < MaxTransactionRetries {
			continue
		}
		if err != nil {
			return fmt.Errorf("xenstore transaction commit: %w", err)
		}
		return nil
	}
}

// Event is a fired watch: the path that changed (or the watched path, for
// the first event) and the watch's token.
type Event struct {
	Path  string
	Token string
}

// Watch is a registered watch. Its events arrive on Events in order; none
// is dropped while the connection lives. Events is closed by Unwatch or
// when the connection ends.
type Watch struct {
	Path   string
	Token  string
	Events <-chan Event
	c      *Client
	q      *eventQueue
}

// Watch registers a watch on path (and its descendants). The server fires
// it once at once. Tokens must be unique per client.
func (c *Client) Watch(path, token string) (*Watch, error) {
	q := newEventQueue()
	w := &Watch{Path: path, Token: token, Events: q.out, c: c, q: q}
	c.mu.Lock()
	if _, dup := c.watches[token]; dup {
		c.mu.Unlock()
		q.close()
		return nil, fmt.Errorf("xenstore watch %s: token %q already in use", path, token)
	}
	c.watches[token] = w
	c.mu.Unlock()
	if _, err := c.do(OpWatch, joinNul(path, token)); err != nil {
		c.mu.Lock()
		delete(c.watches, token)
		c.mu.Unlock()
		q.close()
		return nil, pathErr("watch", path, err)
	}
	return w, nil
}

// Unwatch removes the watch and closes its Events.
func (w *Watch) Unwatch() error {
	_, err := w.c.do(OpUnwatch, joinNul(w.Path, w.Token))
	w.c.mu.Lock()
	if w.c.watches[w.Token] == w {
		delete(w.c.watches, w.Token)
	}
	w.c.mu.Unlock()
	w.q.close()
	if err != nil && !errors.Is(err, ErrClosed) {
		return pathErr("unwatch", w.Path, err)
	}
	return nil
}

// eventQueue decouples the reader from slow watch consumers without
// dropping events: an unbounded FIFO drained by one goroutine.
type eventQueue struct {
	mu     sync.Mutex
	items  []Event
	wake   chan struct{}
	out    chan Event
	closed bool
}

func newEventQueue() *eventQueue {
	q := &eventQueue{wake: make(chan struct{}, 1), out: make(chan Event)}
	go q.run()
	return q
}

func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	if !q.closed {
		q.items = append(q.items, e)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) run() {
	defer close(q.out)
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		if len(q.items) == 0 {
			q.mu.Unlock()
			<-q.wake
			continue
		}
		e := q.items[0]
		q.items = q.items[1:]
		q.mu.Unlock()
		select {
		case q.out <- e:
		case <-q.wake:
			// closed or more events while the consumer was slow: re-check
			q.mu.Lock()
			q.items = append([]Event{e}, q.items...)
			q.mu.Unlock()
		}
	}
}
