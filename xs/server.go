package xs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Quotas bound what one unprivileged domain may hold; dom0 is exempt, as
// in xenstored. Zero means no limit.
type Quotas struct {
	MaxValueSize        int // bytes in one node's value (xenstored: 2048)
	MaxNodesPerDomain   int // nodes a domain owns (xenstored: 1000)
	MaxWatchesPerConn   int // watches of one connection (xenstored: 128)
	MaxTransactionsConn int // open transactions of one connection (xenstored: 10)
	MaxQueuedEvents     int // watch events queued for a reader that does not read; past it the connection is dropped
}

// DefaultQuotas are xenstored's defaults.
var DefaultQuotas = Quotas{MaxValueSize: 2048, MaxNodesPerDomain: 1000, MaxWatchesPerConn: 128, MaxTransactionsConn: 10, MaxQueuedEvents: 4096}

// Special watch paths.
const (
	IntroduceDomain = "@introduceDomain"
	ReleaseDomain   = "@releaseDomain"
)

// Server is a XenStore daemon for the simulated hypervisor: the real wire
// protocol, one connection per client, the connection's domain fixed by
// whoever accepted it (one socket per domain). A misbehaving connection
// gets an error reply or is closed; the others go on. Safe for concurrent use.
type Server struct {
	log *slog.Logger

	mu      sync.Mutex
	t       *tree
	conns   map[*conn]struct{}
	domains map[uint32]bool // introduced domains
	txSeq   uint32
	closed  bool
}

// NewServer returns a server holding "/", "/local", "/local/domain" and
// "/local/domain/0", owned by dom0.
func NewServer(log *slog.Logger, q Quotas) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, t: newTree(q), conns: map[*conn]struct{}{}, domains: map[uint32]bool{0: true}}
	for _, p := range []string{"/local", "/local/domain", "/local/domain/0", "/tool"} {
		if _, err := s.t.write(0, p, nil, true); err != nil {
			panic(err)
		}
	}
	return s
}

// IntroduceDomain registers a domain: creates /local/domain/<dom> (owner
// dom0, readable by the domain, as libxl does) and fires @introduceDomain.
func (s *Server) IntroduceDomain(dom uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.domains[dom] {
		return
	}
	s.domains[dom] = true
	home := DomainPath(dom)
	if _, err := s.t.write(0, home, nil, true); err == nil {
		_, _ = s.t.setPerms(0, home, []Perm{{Dom: dom, Access: AccessNone}})
	}
	s.fireLocked([]change{{path: IntroduceDomain}})
	s.log.Info("xenstore: domain introduced", "dom", dom)
}

// ReleaseDomain forgets a domain that died: its connections are closed
// (dropping their watches and transactions) and @releaseDomain fires. Its
// nodes stay until the toolstack removes them, as with xenstored.
func (s *Server) ReleaseDomain(dom uint32) {
	s.mu.Lock()
	if !s.domains[dom] || dom == 0 {
		s.mu.Unlock()
		return
	}
	delete(s.domains, dom)
	var drop []*conn
	for c := range s.conns {
		if c.dom == dom {
			drop = append(drop, c)
		}
	}
	s.fireLocked([]change{{path: ReleaseDomain}})
	s.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
	s.log.Info("xenstore: domain released", "dom", dom)
}

// Serve accepts connections on l, each as domain dom, until l is closed.
func (s *Server) Serve(l net.Listener, dom uint32) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("xenstore accept: %w", err)
		}
		go s.ServeConn(c, dom)
	}
}

// ServeConn serves one connection as domain dom until it closes.
func (s *Server) ServeConn(rwc io.ReadWriteCloser, dom uint32) {
	c := &conn{s: s, dom: dom, rwc: rwc, txs: map[uint32]*txn{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		rwc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	go c.writeLoop()
	for {
		m, err := ReadMsg(rwc)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("xenstore: dropping connection", "dom", dom, "err", err)
			}
			break
		}
		if !c.handle(m) {
			break
		}
	}
	c.close()
}

// Close closes every connection.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	var all []*conn
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		c.close()
	}
}

// Snapshot returns the value of a node as dom0 sees it, for tests and logs.
func (s *Server) Snapshot(path string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.t.lookup(path)
	if n == nil {
		return nil, false
	}
	return append([]byte(nil), n.value...), true
}

type watch struct {
	path     string // absolute, or a special path
	relative bool   // registered relative to the domain's home
	token    string
}

type txn struct {
	t     *tree
	start uint64
	touch map[string]bool
	ops   []txOp
}

type txOp struct {
	op    Op
	path  string
	value []byte
	perms []Perm
}

type conn struct {
	s   *Server
	dom uint32
	rwc io.ReadWriteCloser

	// Guarded by s.mu.
	watches []watch
	txs     map[uint32]*txn
	out     [][]byte // queued replies and events
	gone    bool

	wake chan struct{}
	done chan struct{}
	once sync.Once
}

func (c *conn) close() {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.gone = true
		c.watches, c.out = nil, nil
		c.txs = map[uint32]*txn{} // never nil: a request may still be in dispatch
		c.s.mu.Unlock()
		c.rwc.Close()
		close(c.done)
	})
}

// queueLocked appends a message for the writer; a reader too slow for the
// quota is dropped rather than letting it hold the server's memory.
func (c *conn) queueLocked(m Msg) {
	if c.gone {
		return
	}
	if q := c.s.t.quota.MaxQueuedEvents; q > 0 && len(c.out) >= q {
		c.gone = true
		go c.close()
		return
	}
	b, err := AppendMsg(nil, m)
	if err != nil {
		b, _ = AppendMsg(nil, Msg{Op: OpError, ReqID: m.ReqID, TxID: m.TxID, Payload: joinNul(string(E2BIG))})
	}
	c.out = append(c.out, b)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *conn) writeLoop() {
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		}
		c.s.mu.Lock()
		out := c.out
		c.out = nil
		c.s.mu.Unlock()
		for _, b := range out {
			if _, err := c.rwc.Write(b); err != nil {
				c.close()
				return
			}
		}
	}
}

// abs turns a request path into an absolute one: relative paths live
// under the connection's domain home.
func (c *conn) abs(p string) (string, error) {
	if err := ValidPath(p); err != nil {
		return "", err
	}
	if p[0] == '/' || p[0] == '@' {
		return p, nil
	}
	a := DomainPath(c.dom) + "/" + p
	if len(a) > AbsPathMax {
		return "", EINVAL
	}
	return a, nil
}

// args splits a payload into exactly n NUL-terminated strings; the last
// may be unterminated only when rest is true (WRITE's value).
func args(payload []byte, n int) ([]string, bool) {
	parts := strings.SplitN(string(payload), "\x00", n+1)
	if len(parts) != n+1 || parts[n] != "" {
		return nil, false
	}
	return parts[:n], true
}

// handle serves one request; false closes the connection.
func (c *conn) handle(m Msg) bool {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.gone {
		return false // dropped (too slow a reader, domain released): serve nothing more
	}
	reply, err := c.dispatchLocked(m)
	if err == errAlreadyReplied {
		return true
	}
	if err != nil {
		var e Errno
		if !errors.As(err, &e) {
			e = EINVAL
		}
		c.queueLocked(Msg{Op: OpError, ReqID: m.ReqID, TxID: m.TxID, Payload: joinNul(string(e))})
		return true
	}
	c.queueLocked(Msg{Op: m.Op, ReqID: m.ReqID, TxID: m.TxID, Payload: reply})
	return true
}

var okReply = joinNul("OK")

func (c *conn) dispatchLocked(m Msg) ([]byte, error) {
	s := c.s
	t := s.t
	var tx *txn
	if m.TxID != 0 && m.Op != OpTransactionStart {
		if tx = c.txs[m.TxID]; tx == nil {
			return nil, ENOENT
		}
		t = tx.t
	}
	switch m.Op {
	case OpRead, OpDirectory, OpGetPerms, OpMkdir, OpRm:
		a, ok := args(m.Payload, 1)
		if !ok {
			return nil, EINVAL
		}
		p, err := c.abs(a[0])
		if err != nil || p[0] == '@' {
			return nil, EINVAL
		}
		if tx != nil {
			tx.touch[p] = true
		}
		switch m.Op {
		case OpRead:
			return t.read(c.dom, p)
		case OpDirectory:
			names, err := t.directory(c.dom, p)
			if err != nil {
				return nil, err
			}
			if len(names) == 0 {
				return nil, nil
			}
			b := joinNul(names...)
			if len(b) > PayloadMax {
				return nil, E2BIG
			}
			return b, nil
		case OpGetPerms:
			perms, err := t.getPerms(c.dom, p)
			if err != nil {
				return nil, err
			}
			strs := make([]string, len(perms))
			for i, q := range perms {
				strs[i] = q.String()
			}
			return joinNul(strs...), nil
		case OpMkdir:
			return c.modifyLocked(tx, txOp{op: OpMkdir, path: p})
		default:
			return c.modifyLocked(tx, txOp{op: OpRm, path: p})
		}
	case OpWrite:
		i := indexNul(m.Payload)
		if i < 0 {
			return nil, EINVAL
		}
		p, err := c.abs(string(m.Payload[:i]))
		if err != nil || p[0] == '@' {
			return nil, EINVAL
		}
		return c.modifyLocked(tx, txOp{op: OpWrite, path: p, value: append([]byte(nil), m.Payload[i+1:]...)})
	case OpSetPerms:
		parts := splitNul(m.Payload)
		if len(parts) < 2 || m.Payload[len(m.Payload)-1] != 0 {
			return nil, EINVAL
		}
		p, err := c.abs(parts[0])
		if err != nil || p[0] == '@' {
			return nil, EINVAL
		}
		perms := make([]Perm, 0, len(parts)-1)
		for _, ps := range parts[1:] {
			q, err := ParsePerm(ps)
			if err != nil {
				return nil, EINVAL
			}
			perms = append(perms, q)
		}
		return c.modifyLocked(tx, txOp{op: OpSetPerms, path: p, perms: perms})
	case OpWatch, OpUnwatch:
		a, ok := args(m.Payload, 2)
		if !ok || tx != nil {
			return nil, EINVAL
		}
		p, err := c.abs(a[0])
		if err != nil {
			return nil, err
		}
		w := watch{path: p, relative: a[0][0] != '/' && a[0][0] != '@', token: a[1]}
		if m.Op == OpUnwatch {
			for i, x := range c.watches {
				if x.path == w.path && x.token == w.token {
					c.watches = append(c.watches[:i], c.watches[i+1:]...)
					return okReply, nil
				}
			}
			return nil, ENOENT
		}
		for _, x := range c.watches {
			if x.path == w.path && x.token == w.token {
				return nil, EEXIST
			}
		}
		if q := t.quota.MaxWatchesPerConn; c.dom != 0 && q > 0 && len(c.watches) >= q {
			return nil, E2BIG
		}
		c.watches = append(c.watches, w)
		// Reply first, then the initial event (xenstored's order).
		c.queueLocked(Msg{Op: OpWatch, ReqID: m.ReqID, TxID: m.TxID, Payload: okReply})
		c.queueLocked(Msg{Op: OpWatchEvent, Payload: joinNul(a[0], w.token)})
		return nil, errAlreadyReplied
	case OpTransactionStart:
		if m.TxID != 0 {
			return nil, EBUSY
		}
		if q := t.quota.MaxTransactionsConn; c.dom != 0 && q > 0 && len(c.txs) >= q {
			return nil, ENOSPC
		}
		s.txSeq++
		if s.txSeq == 0 {
			s.txSeq = 1
		}
		c.txs[s.txSeq] = &txn{t: s.t.clone(), start: s.t.gen, touch: map[string]bool{}}
		return joinNul(strconv.FormatUint(uint64(s.txSeq), 10)), nil
	case OpTransactionEnd:
		a, ok := args(m.Payload, 1)
		if !ok || tx == nil || (a[0] != "T" && a[0] != "F") {
			return nil, EINVAL
		}
		delete(c.txs, m.TxID)
		defer s.pruneTombsLocked()
		if a[0] == "F" {
			return okReply, nil
		}
		for p := range tx.touch {
			if s.t.changedSince(p, tx.start) {
				return nil, EAGAIN
			}
		}
		for _, op := range tx.ops {
			if _, err := c.applyLocked(op); err != nil {
				return nil, err
			}
		}
		return okReply, nil
	case OpGetDomainPath:
		a, ok := args(m.Payload, 1)
		if !ok {
			return nil, EINVAL
		}
		d, err := parseUint(a[0], 0xffff)
		if err != nil {
			return nil, EINVAL
		}
		return joinNul(DomainPath(uint32(d))), nil
	case OpIsDomainIntroduced:
		a, ok := args(m.Payload, 1)
		if !ok || c.dom != 0 {
			return nil, EACCES
		}
		d, err := parseUint(a[0], 0xffff)
		if err != nil {
			return nil, EINVAL
		}
		if s.domains[uint32(d)] {
			return joinNul("T"), nil
		}
		return joinNul("F"), nil
	case OpResetWatches:
		c.watches, c.txs = nil, map[uint32]*txn{}
		return okReply, nil
	case OpIntroduce, OpRelease, OpResume, OpSetTarget:
		if c.dom != 0 {
			return nil, EACCES
		}
		return nil, ENOSYS // the simulator introduces domains itself (pvusb sim)
	case OpDirectoryPart:
		return c.directoryPartLocked(t, m.Payload)
	}
	return nil, EINVAL
}

// errAlreadyReplied: the handler queued its own reply.
var errAlreadyReplied = errors.New("replied")

func indexNul(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// modifyLocked applies a change now, or records it in the transaction.
func (c *conn) modifyLocked(tx *txn, op txOp) ([]byte, error) {
	if tx == nil {
		return c.applyLocked(op)
	}
	if _, err := applyTo(tx.t, c.dom, op); err != nil {
		return nil, err
	}
	tx.touch[op.path] = true
	if i := strings.LastIndexByte(op.path, '/'); i > 0 {
		tx.touch[op.path[:i]] = true // creation and removal change the parent
	}
	tx.ops = append(tx.ops, op)
	return okReply, nil
}

func (c *conn) applyLocked(op txOp) ([]byte, error) {
	changes, err := applyTo(c.s.t, c.dom, op)
	if err != nil {
		return nil, err
	}
	c.s.fireLocked(changes)
	return okReply, nil
}

func applyTo(t *tree, dom uint32, op txOp) ([]change, error) {
	switch op.op {
	case OpWrite:
		return t.write(dom, op.path, op.value, false)
	case OpMkdir:
		return t.write(dom, op.path, nil, true)
	case OpRm:
		return t.rm(dom, op.path)
	case OpSetPerms:
		return t.setPerms(dom, op.path, op.perms)
	}
	return nil, EINVAL
}

// fireLocked queues watch events for changes: a watch fires for a change
// to its path or below it, and for the removal of a subtree it is in. Only
// watchers that may read the node hear of it; special paths reach only
// dom0. Each watch fires at most once per path per batch.
func (s *Server) fireLocked(changes []change) {
	for c := range s.conns {
		for _, w := range c.watches {
			seen := map[string]bool{}
			for _, ch := range changes {
				evPath := ""
				switch {
				case ch.path[0] == '@':
					if w.path == ch.path && c.dom == 0 {
						evPath = ch.path
					}
				case isAncestorOrSelf(w.path, ch.path):
					if access(c.dom, ch.perms).CanRead() {
						evPath = ch.path
					}
				case ch.removed && isAncestorOrSelf(ch.path, w.path):
					if access(c.dom, ch.perms).CanRead() {
						evPath = w.path
					}
				}
				if evPath == "" || seen[evPath] {
					continue
				}
				seen[evPath] = true
				if w.relative {
					evPath = strings.TrimPrefix(evPath, DomainPath(c.dom)+"/")
				}
				c.queueLocked(Msg{Op: OpWatchEvent, Payload: joinNul(evPath, w.token)})
			}
		}
	}
}

func isAncestorOrSelf(anc, p string) bool {
	switch {
	case anc == p:
		return true
	case anc == "/":
		return strings.HasPrefix(p, "/")
	}
	return len(p) > len(anc) && strings.HasPrefix(p, anc) && p[len(anc)] == '/'
}

// pruneTombsLocked forgets removals no open transaction can conflict with.
func (s *Server) pruneTombsLocked() {
	oldest := s.t.gen
	for c := range s.conns {
		for _, tx := range c.txs {
			oldest = min(oldest, tx.start)
		}
	}
	for p, g := range s.t.tombs {
		if g <= oldest {
			delete(s.t.tombs, p)
		}
	}
}

// directoryPartLocked serves DIRECTORY_PART: "path\0offset\0" →
// "<generation>\0" then the children from byte offset of the full listing,
// ending with an empty string once the listing is complete.
func (c *conn) directoryPartLocked(t *tree, payload []byte) ([]byte, error) {
	a, ok := args(payload, 2)
	if !ok {
		return nil, EINVAL
	}
	p, err := c.abs(a[0])
	if err != nil || p[0] == '@' {
		return nil, EINVAL
	}
	off, err := parseUint(a[1], 1<<31)
	if err != nil {
		return nil, EINVAL
	}
	names, err := t.directory(c.dom, p)
	if err != nil {
		return nil, err
	}
	all := joinNul(names...)
	if int(off) > len(all) {
		return nil, EINVAL
	}
	head := joinNul(strconv.FormatUint(t.lookup(p).gen, 10))
	room := PayloadMax - len(head) - 1
	rest := all[off:]
	if len(rest) <= room {
		return append(append(head, rest...), 0), nil
	}
	cut := room
	for cut > 0 && rest[cut-1] != 0 {
		cut-- // whole names only
	}
	return append(head, rest[:cut]...), nil
}
