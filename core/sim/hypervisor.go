package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/xs"
)

// Hypervisor is the simulated hypervisor. Safe for concurrent use.
type Hypervisor struct {
	dir string
	log *slog.Logger
	xs  *xs.Server

	ctl  *net.UnixListener
	xs0  net.Listener
	mu   sync.Mutex
	doms map[uint32]*domain
	// Mappings pin grants in the granter's shared active table (Pin), so
	// the entry's reading/writing flags stay set while any lives.
	nextHandle uint64
	nextGen    uint64 // incarnations: a domid that joins again is a new domain
	wg         sync.WaitGroup
}

type grantKey struct {
	dom    uint32
	ref    uint32
	gen    uint64 // the granter's incarnation: a re-joined domid is a new domain
	mapper uint32
}

type domain struct {
	id       uint32
	gen      uint64
	conn     *net.UnixConn
	wmu      sync.Mutex
	ramFD    int
	ramROFD  int
	ramPages int
	gtFD     int
	gt       []byte // the domain's grant table, mapped shared
	ports    map[uint32]*port
	nextPort uint32
	maps     map[uint64]*mapping // mappings this domain holds
	xsL      net.Listener
}

type mapping struct {
	key      []grantKey
	writable bool
}

type port struct {
	id        uint32
	owner     *domain
	remoteDom uint32 // who may bind (unbound) or who is bound
	remote    *port  // nil while unbound
	efd       int    // eventfd: written to notify this port's owner
}

// NewHypervisor creates dir, serves dom0's XenStore at dir/xenstored.sock
// and the control socket at dir/sim.sock. Call Serve.
func NewHypervisor(dir string, log *slog.Logger) (*Hypervisor, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("simulator directory: %w", err)
	}
	h := &Hypervisor{dir: dir, log: log, xs: xs.NewServer(log, xs.DefaultQuotas), doms: map[uint32]*domain{}}
	for _, name := range []string{ControlSocket, Dom0XenStore} {
		_ = os.Remove(filepath.Join(dir, name))
	}
	var err error
	if h.xs0, err = net.Listen("unix", XenStorePath(dir, 0)); err != nil {
		return nil, fmt.Errorf("dom0 xenstore socket: %w", err)
	}
	if h.ctl, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: filepath.Join(dir, ControlSocket), Net: "unixpacket"}); err != nil {
		h.xs0.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return h, nil
}

// XenStore is the hypervisor's XenStore server.
func (h *Hypervisor) XenStore() *xs.Server { return h.xs }

// Mappings counts the live map requests of domain dom (grants mapped
// through the hypervisor: the backend's rings): a leak check for tests.
func (h *Hypervisor) Mappings(dom uint32) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.doms[dom]; d != nil {
		return len(d.maps)
	}
	return 0
}

// Dir is the simulator's directory.
func (h *Hypervisor) Dir() string { return h.dir }

// Serve runs until ctx ends, then shuts everything down.
func (h *Hypervisor) Serve(ctx context.Context) error {
	go h.xs.Serve(h.xs0, 0)
	go func() {
		<-ctx.Done()
		h.ctl.Close()
		h.xs0.Close()
	}()
	for {
		c, err := h.ctl.AcceptUnix()
		if err != nil {
			break
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.serveDomain(c)
		}()
	}
	h.mu.Lock()
	for _, d := range h.doms {
		d.conn.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	h.xs.Close()
	return nil
}

func (h *Hypervisor) serveDomain(c *net.UnixConn) {
	rd := new(reader)
	var hello request
	fds, err := rd.recvMsg(c, &hello)
	if err != nil || hello.Op != "hello" {
		closeAll(fds)
		c.Close()
		return
	}
	d, err := h.join(c, hello, fds)
	if err != nil {
		closeAll(fds)
		_ = sendMsg(c, reply{ID: hello.ID, Err: err.Error(), Code: codeInvalid})
		c.Close()
		h.log.Warn("sim: join refused", "dom", hello.Dom, "err", err)
		return
	}
	_ = d.send(reply{ID: hello.ID})
	h.log.Info("sim: domain joined", "dom", d.id, "ram_pages", d.ramPages)
	for {
		var req request
		fds, err := rd.recvMsg(c, &req)
		closeAll(fds) // requests after hello carry no descriptors
		if err != nil {
			break
		}
		h.handle(d, req)
	}
	h.release(d)
}

func (h *Hypervisor) join(c *net.UnixConn, hello request, fds []int) (*domain, error) {
	if len(fds) != 2 {
		return nil, fmt.Errorf("hello carries %d descriptors, want RAM and grant table", len(fds))
	}
	if hello.RAMPages <= 0 || hello.RAMPages > 1<<20 {
		return nil, fmt.Errorf("ram_pages %d out of range", hello.RAMPages)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil || st.Size < int64(hello.RAMPages)*PageSize {
		return nil, fmt.Errorf("RAM memfd smaller than %d pages", hello.RAMPages)
	}
	if err := unix.Fstat(fds[1], &st); err != nil || st.Size < TablePages*PageSize {
		return nil, errors.New("grant table memfd too small")
	}
	gt, err := unix.Mmap(fds[1], 0, TablePages*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map grant table: %w", err)
	}
	// A read-only grant is handed out as a new read-only open of the RAM:
	// the kernel then refuses PROT_WRITE and mprotect for the mapper.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fds[0]), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Munmap(gt)
		return nil, fmt.Errorf("read-only view of RAM: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.doms[hello.Dom]; dup {
		unix.Munmap(gt)
		unix.Close(ro)
		return nil, fmt.Errorf("domain %d already joined", hello.Dom)
	}
	h.nextGen++
	d := &domain{id: hello.Dom, gen: h.nextGen, conn: c, ramFD: fds[0], ramROFD: ro, ramPages: hello.RAMPages, gtFD: fds[1], gt: gt,
		ports: map[uint32]*port{}, nextPort: 1, maps: map[uint64]*mapping{}}
	if d.id != 0 {
		path := XenStorePath(h.dir, d.id)
		_ = os.Remove(path)
		l, err := net.Listen("unix", path)
		if err != nil {
			unix.Munmap(gt)
			unix.Close(ro)
			return nil, fmt.Errorf("xenstore socket of dom%d: %w", d.id, err)
		}
		d.xsL = l
		go h.xs.Serve(l, d.id)
		h.xs.IntroduceDomain(d.id)
	}
	h.doms[d.id] = d
	return d, nil
}

func (d *domain) send(r reply, fds ...int) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	return sendMsg(d.conn, r, fds...)
}

func fail(code, format string, args ...any) reply {
	return reply{Code: code, Err: fmt.Sprintf(format, args...)}
}

func (h *Hypervisor) handle(d *domain, req request) {
	var r reply
	var fds []int
	switch req.Op {
	case "grant_table":
		r, fds = h.grantTable(d, req.Dom)
	case "map":
		r, fds = h.mapGrants(d, req)
	case "unmap":
		r = h.unmapGrants(d, req.Handle)
	case "bind_unbound":
		r, fds = h.bindUnbound(d, req.Dom)
	case "bind_interdomain":
		r, fds = h.bindInterdomain(d, req.Dom, req.Port)
	case "peer_fd":
		r, fds = h.peerFD(d, req.Port)
	case "unbind":
		r = h.unbind(d, req.Port)
	default:
		r = fail(codeInvalid, "unknown operation %q", req.Op)
	}
	r.ID = req.ID
	_ = d.send(r, fds...)
}

func (d *domain) entry(ref uint32) (word *uint32, frame uint32) {
	off := int(ref) * GrantEntrySize
	return wordAt(d.gt, off), binary.LittleEndian.Uint32(d.gt[off+4:])
}

// mapGrants checks each entry as Xen's grant-table code does (in use,
// granted to the mapper, writable only if not read-only, frame inside the
// granter's RAM), marks it mapped with a compare-and-swap on the flags the
// granter also swaps, and hands over the granter's RAM descriptor
// (read-only for a read-only map) with the frames to mmap.
func (h *Hypervisor) mapGrants(d *domain, req request) (reply, []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.doms[req.Dom]
	if g == nil {
		return fail(codeBadDomain, "map: no domain %d", req.Dom), nil
	}
	if len(req.Refs) == 0 || len(req.Refs) > MaxMapBatch {
		return fail(codeInvalid, "map: %d refs", len(req.Refs)), nil
	}
	var done []grantKey
	undo := func() {
		for _, k := range done {
			h.untrackLocked(k, req.Writable)
		}
	}
	frames := make([]uint32, len(req.Refs))
	for i, ref := range req.Refs {
		if ref >= GrantEntries {
			undo()
			return fail(codeBadGntref, "map: ref %d of dom%d outside the table", ref, g.id), nil
		}
		word, frame := g.entry(ref)
		flags, grantee := loadFlags(word)
		switch {
		case flags&3 != GTFPermitAccess:
			undo()
			return fail(codeBadGntref, "map: ref %d of dom%d not in use", ref, g.id), nil
		case grantee != d.id:
			undo()
			return fail(codePermission, "map: ref %d of dom%d is granted to dom%d, not dom%d", ref, g.id, grantee, d.id), nil
		case req.Writable && flags&GTFReadonly != 0:
			undo()
			return fail(codePermission, "map: ref %d of dom%d is read-only", ref, g.id), nil
		case int(frame) >= g.ramPages:
			undo()
			return fail(codeBadGntref, "map: ref %d of dom%d names frame %d outside its RAM", ref, g.id, frame), nil
		}
		k := grantKey{dom: g.id, ref: ref, gen: g.gen, mapper: d.id}
		if !h.trackLocked(g, k, req.Writable) {
			undo()
			return fail(codeBadGntref, "map: ref %d of dom%d ended while mapping", ref, g.id), nil
		}
		done = append(done, k)
		frames[i] = frame
	}
	h.nextHandle++
	d.maps[h.nextHandle] = &mapping{key: done, writable: req.Writable}
	fd := g.ramROFD
	if req.Writable {
		fd = g.ramFD
	}
	return reply{Frames: frames, Handle: h.nextHandle, Gen: g.gen, FDs: []string{"ram"}}, []int{fd}
}

// trackLocked pins a grant for a mapping (Pin: the shared active table
// and the entry's flags), failing if the granter ended access meanwhile.
func (h *Hypervisor) trackLocked(g *domain, k grantKey, writable bool) bool {
	_, err := Pin(g.gt, g.ramPages, k.ref, k.mapper, writable)
	return err == nil
}

// untrackLocked unpins a mapping's grant, unless the granter is gone (its
// table went with it).
func (h *Hypervisor) untrackLocked(k grantKey, writable bool) {
	g := h.doms[k.dom]
	if g == nil || g.gen != k.gen {
		return
	}
	Unpin(g.gt, k.ref, writable)
}

// grantTable hands dom0 a domain's RAM and grant table for local grant
// copies (Domain.GrantTable); nobody else may ask.
func (h *Hypervisor) grantTable(d *domain, dom uint32) (reply, []int) {
	if d.id != 0 {
		return fail(codePermission, "grant_table: dom%d is not privileged", d.id), nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.doms[dom]
	if g == nil || dom == 0 {
		return fail(codeBadDomain, "grant_table: no domain %d", dom), nil
	}
	return reply{Gen: g.gen, FDs: []string{"ram", "grant_table"}}, []int{g.ramFD, g.gtFD}
}

func (h *Hypervisor) unmapGrants(d *domain, handle uint64) reply {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := d.maps[handle]
	if m == nil {
		return fail(codeInvalid, "unmap: no mapping %d", handle)
	}
	delete(d.maps, handle)
	for _, k := range m.key {
		h.untrackLocked(k, m.writable)
	}
	return reply{}
}

func (h *Hypervisor) newPort(d *domain, remoteDom uint32) (*port, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	p := &port{id: d.nextPort, owner: d, remoteDom: remoteDom, efd: efd}
	d.nextPort++
	d.ports[p.id] = p
	return p, nil
}

func (h *Hypervisor) bindUnbound(d *domain, remote uint32) (reply, []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, err := h.newPort(d, remote)
	if err != nil {
		return fail(codeInvalid, "bind unbound: %v", err), nil
	}
	return reply{Port: p.id, FDs: []string{"own"}}, []int{p.efd}
}

func (h *Hypervisor) bindInterdomain(d *domain, remoteDom, remotePort uint32) (reply, []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rd := h.doms[remoteDom]
	if rd == nil {
		return fail(codeBadDomain, "bind interdomain: no domain %d", remoteDom), nil
	}
	rp := rd.ports[remotePort]
	if rp == nil || rp.remote != nil || rp.remoteDom != d.id {
		return fail(codeNotBound, "bind interdomain: port %d of dom%d is not open for dom%d", remotePort, remoteDom, d.id), nil
	}
	p, err := h.newPort(d, remoteDom)
	if err != nil {
		return fail(codeInvalid, "bind interdomain: %v", err), nil
	}
	p.remote, rp.remote = rp, p
	return reply{Port: p.id, FDs: []string{"own", "peer"}}, []int{p.efd, rp.efd}
}

func (h *Hypervisor) peerFD(d *domain, id uint32) (reply, []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := d.ports[id]
	if p == nil {
		return fail(codeNotBound, "port %d not bound", id), nil
	}
	if p.remote == nil {
		return fail(codePeerGone, "port %d has no peer", id), nil
	}
	return reply{Port: id, FDs: []string{"peer"}}, []int{p.remote.efd}
}

func (h *Hypervisor) unbind(d *domain, id uint32) reply {
	h.mu.Lock()
	p := d.ports[id]
	if p == nil {
		h.mu.Unlock()
		return fail(codeNotBound, "unbind: port %d not bound", id)
	}
	n := h.closePortLocked(p)
	h.mu.Unlock()
	n.send() // before our reply: the peer hears first
	return reply{}
}

// peerNotice tells a port's owner that its peer closed the channel.
type peerNotice struct {
	to  *domain
	msg reply
}

type notices []peerNotice

// send delivers the notices outside the hypervisor's lock, in order: a
// domain that does not read can stall only its own socket.
func (ns notices) send() {
	for _, n := range ns {
		_ = n.to.send(n.msg)
	}
}

// closePortLocked closes a port; its peer goes back to unbound (it may be
// bound again by the same domain) and must hear of it: the caller sends
// the returned notice after unlocking.
func (h *Hypervisor) closePortLocked(p *port) notices {
	delete(p.owner.ports, p.id)
	unix.Close(p.efd)
	r := p.remote
	if r == nil {
		return nil
	}
	r.remote = nil
	return notices{{to: r.owner, msg: reply{Event: "peer_closed", Port: r.id, Dom: p.owner.id}}}
}

// release forgets a domain that left or died: its channels close, the
// mappings it held are dropped, its XenStore connections go and
// @releaseDomain fires. Pages it granted stay valid for whoever still
// maps them, as on Xen, until they unmap.
func (h *Hypervisor) release(d *domain) {
	h.mu.Lock()
	var ns notices
	for _, p := range d.ports {
		ns = append(ns, h.closePortLocked(p)...)
	}
	for handle, m := range d.maps {
		for _, k := range m.key {
			h.untrackLocked(k, m.writable)
		}
		delete(d.maps, handle)
	}
	delete(h.doms, d.id)
	if d0 := h.doms[0]; d0 != nil && d.id != 0 {
		// dom0 caches tables for grant copies: it must forget this one.
		ns = append(ns, peerNotice{to: d0, msg: reply{Event: "domain_left", Dom: d.id}})
	}
	h.mu.Unlock()
	ns.send() // peers hear before @releaseDomain fires
	unix.Munmap(d.gt)
	unix.Close(d.gtFD)
	unix.Close(d.ramFD)
	unix.Close(d.ramROFD)
	d.conn.Close()
	if d.xsL != nil {
		d.xsL.Close()
		_ = os.Remove(XenStorePath(h.dir, d.id))
		h.xs.ReleaseDomain(d.id)
	}
	h.log.Info("sim: domain left", "dom", d.id)
}

func loadFlags(word *uint32) (flags uint16, dom uint32) {
	w := loadWord(word)
	return uint16(w), w >> 16
}
