package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Domain is this process's membership in a simulated hypervisor: its RAM
// and grant table (both memfds shared with the hypervisor) and the control
// connection. The grant and evtchn packages build on it. Safe for
// concurrent use.
type Domain struct {
	ID  uint32
	dir string

	conn  *net.UnixConn
	ram   []byte
	ramFD int
	gt    []byte
	gtFD  int

	mu       sync.Mutex
	nextID   uint64
	pending  map[uint64]chan result
	err      error
	done     chan struct{}
	onClosed []func(port uint32)
	onLeft   []func(dom uint32)

	amu      sync.Mutex
	used     []bool   // RAM frames in use
	freeRefs []uint32 // grant references free for use
}

type result struct {
	r   reply
	fds []int
}

// ErrLeft is returned by calls after the domain left the hypervisor.
var ErrLeft = errors.New("sim: domain left the hypervisor")

// Join connects to the hypervisor in dir as domain dom with the default
// RAM size.
func Join(dir string, dom uint32) (*Domain, error) { return JoinRAM(dir, dom, DefaultRAMPages) }

// JoinRAM joins with ramPages pages of RAM.
func JoinRAM(dir string, dom uint32, ramPages int) (*Domain, error) {
	ramFD, err := newMemfd("pvusb-ram", ramPages)
	if err != nil {
		return nil, err
	}
	gtFD, err := newMemfd("pvusb-grant-table", TablePages)
	if err != nil {
		unix.Close(ramFD)
		return nil, err
	}
	d := &Domain{ID: dom, dir: dir, ramFD: ramFD, gtFD: gtFD, pending: map[uint64]chan result{}, done: make(chan struct{}), used: make([]bool, ramPages)}
	fail := func(err error) (*Domain, error) {
		d.unmapAll()
		return nil, fmt.Errorf("join simulator %s as dom%d: %w", dir, dom, err)
	}
	if d.ram, err = unix.Mmap(ramFD, 0, ramPages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fail(err)
	}
	if d.gt, err = unix.Mmap(gtFD, 0, TablePages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fail(err)
	}
	for r := uint32(GrantEntries - 1); r >= FirstGrantRef; r-- {
		d.freeRefs = append(d.freeRefs, r)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, ControlSocket), Net: "unixpacket"})
	if err != nil {
		return fail(err)
	}
	d.conn = c
	if err := sendMsg(c, request{ID: 0, Op: "hello", Dom: dom, RAMPages: ramPages}, ramFD, gtFD); err != nil {
		c.Close()
		return fail(err)
	}
	var r reply
	fds, err := new(reader).recvMsg(c, &r)
	closeAll(fds)
	if err == nil && r.Err != "" {
		err = &CodeError{Code: r.Code, Msg: r.Err}
	}
	if err != nil {
		c.Close()
		return fail(err)
	}
	go d.readLoop()
	return d, nil
}

// newMemfd makes a sealed memfd of pages pages: the size can neither
// shrink nor grow, so no peer can make a mapper fault by truncating it.
func newMemfd(name string, pages int) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(pages)*4096); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("memfd size: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("memfd seals: %w", err)
	}
	return fd, nil
}

func (d *Domain) unmapAll() {
	if d.ram != nil {
		unix.Munmap(d.ram)
	}
	if d.gt != nil {
		unix.Munmap(d.gt)
	}
	unix.Close(d.ramFD)
	unix.Close(d.gtFD)
}

// XenStorePath is this domain's XenStore socket.
func (d *Domain) XenStorePath() string { return XenStorePath(d.dir, d.ID) }

// Done is closed when the connection to the hypervisor is gone.
func (d *Domain) Done() <-chan struct{} { return d.done }

// Close leaves the hypervisor: it releases this domain's channels and
// mappings and fires @releaseDomain. Pages others map stay valid for them.
func (d *Domain) Close() error {
	err := d.conn.Close()
	<-d.done
	d.unmapAll()
	return err
}

// OnPeerClosed registers fn to hear that the peer of a local port closed it.
func (d *Domain) OnPeerClosed(fn func(port uint32)) {
	d.mu.Lock()
	d.onClosed = append(d.onClosed, fn)
	d.mu.Unlock()
}

// OnDomainLeft registers fn to hear that another domain left (dom0 only:
// its grant copies cache other domains' tables).
func (d *Domain) OnDomainLeft(fn func(dom uint32)) {
	d.mu.Lock()
	d.onLeft = append(d.onLeft, fn)
	d.mu.Unlock()
}

func (d *Domain) readLoop() {
	rd := new(reader)
	for {
		var r reply
		fds, err := rd.recvMsg(d.conn, &r)
		if err != nil {
			break
		}
		if r.Event != "" {
			closeAll(fds)
			d.mu.Lock()
			closed := append([]func(uint32){}, d.onClosed...)
			left := append([]func(uint32){}, d.onLeft...)
			d.mu.Unlock()
			switch r.Event {
			case "peer_closed":
				for _, fn := range closed {
					fn(r.Port)
				}
			case "domain_left":
				for _, fn := range left {
					fn(r.Dom)
				}
			}
			continue
		}
		d.mu.Lock()
		ch := d.pending[r.ID]
		delete(d.pending, r.ID)
		d.mu.Unlock()
		if ch == nil {
			closeAll(fds)
			continue
		}
		ch <- result{r, fds}
	}
	d.mu.Lock()
	d.err = ErrLeft
	for id, ch := range d.pending {
		close(ch)
		delete(d.pending, id)
	}
	d.mu.Unlock()
	close(d.done)
}

// call sends a request and waits for its reply and descriptors.
func (d *Domain) call(req request) (reply, []int, error) {
	ch := make(chan result, 1)
	d.mu.Lock()
	if d.err != nil {
		d.mu.Unlock()
		return reply{}, nil, d.err
	}
	d.nextID++
	req.ID = d.nextID
	d.pending[req.ID] = ch
	d.mu.Unlock()
	if err := sendMsg(d.conn, req); err != nil {
		d.mu.Lock()
		delete(d.pending, req.ID)
		d.mu.Unlock()
		return reply{}, nil, fmt.Errorf("sim %s: %w", req.Op, err)
	}
	res, ok := <-ch
	if !ok {
		return reply{}, nil, ErrLeft
	}
	if res.r.Err != "" {
		closeAll(res.fds)
		return reply{}, nil, &CodeError{Code: res.r.Code, Msg: res.r.Err}
	}
	if len(res.fds) != len(res.r.FDs) {
		closeAll(res.fds)
		return reply{}, nil, fmt.Errorf("sim %s: %d descriptors, expected %d", req.Op, len(res.fds), len(res.r.FDs))
	}
	return res.r, res.fds, nil
}

// Mapped is the answer to MapGrants.
type Mapped struct {
	Frames []uint32 // each ref's frame in the granter's RAM
	Handle uint64   // for UnmapGrants
	RAMFD  int      // the granter's RAM, read-only unless writable: mmap, then close
	Gen    uint64   // the granter's incarnation, to key a cached view of its RAM
}

// MapGrants asks the hypervisor to check and mark refs of dom as mapped
// (until UnmapGrants) and to hand over the granter's RAM.
func (d *Domain) MapGrants(dom uint32, refs []uint32, writable bool) (Mapped, error) {
	r, fds, err := d.call(request{Op: "map", Dom: dom, Refs: refs, Writable: writable})
	if err != nil {
		return Mapped{RAMFD: -1}, err
	}
	if len(r.Frames) != len(refs) {
		closeAll(fds)
		return Mapped{RAMFD: -1}, fmt.Errorf("sim map: %d frames for %d refs", len(r.Frames), len(refs))
	}
	return Mapped{Frames: r.Frames, Handle: r.Handle, RAMFD: fds[0], Gen: r.Gen}, nil
}

// GrantTable hands dom0 another domain's RAM and grant table (entries
// and active table), both writable, for grant copies that pin grants in
// shared memory as the hypervisor does (Pin, Unpin): what
// IOCTL_GNTDEV_GRANT_COPY asks of Xen, done without a round trip. The
// caller mmaps and closes both descriptors; Gen names the incarnation.
func (d *Domain) GrantTable(dom uint32) (ramFD, gtFD int, gen uint64, err error) {
	r, fds, err := d.call(request{Op: "grant_table", Dom: dom})
	if err != nil {
		return -1, -1, 0, err
	}
	return fds[0], fds[1], r.Gen, nil
}

// UnmapGrants releases a mapping made by MapGrants.
func (d *Domain) UnmapGrants(handle uint64) error {
	_, _, err := d.call(request{Op: "unmap", Handle: handle})
	return err
}

// BindUnbound allocates a port for remote; it returns the port and the
// eventfd that fires when the peer notifies it.
func (d *Domain) BindUnbound(remote uint32) (uint32, int, error) {
	r, fds, err := d.call(request{Op: "bind_unbound", Dom: remote})
	if err != nil {
		return 0, -1, err
	}
	return r.Port, fds[0], nil
}

// BindInterdomain binds to remotePort of remote; it returns the local
// port, its eventfd, and the peer's eventfd to notify.
func (d *Domain) BindInterdomain(remote, remotePort uint32) (port uint32, own, peer int, err error) {
	r, fds, err := d.call(request{Op: "bind_interdomain", Dom: remote, Port: remotePort})
	if err != nil {
		return 0, -1, -1, err
	}
	return r.Port, fds[0], fds[1], nil
}

// PeerFD returns the eventfd that notifies the peer of a local port.
func (d *Domain) PeerFD(port uint32) (int, error) {
	_, fds, err := d.call(request{Op: "peer_fd", Port: port})
	if err != nil {
		return -1, err
	}
	return fds[0], nil
}

// Unbind closes a port.
func (d *Domain) Unbind(port uint32) error {
	_, _, err := d.call(request{Op: "unbind", Port: port})
	return err
}

// RAM is this domain's memory, as it sees it.
func (d *Domain) RAM() []byte { return d.ram }

// AllocFrames reserves n contiguous free frames of RAM, zeroed.
func (d *Domain) AllocFrames(n int) (uint32, error) {
	d.amu.Lock()
	defer d.amu.Unlock()
	run := 0
	for f := range d.used {
		if d.used[f] {
			run = 0
			continue
		}
		if run++; run == n {
			start := f - n + 1
			for i := start; i <= f; i++ {
				d.used[i] = true
			}
			clear(d.ram[start*4096 : (f+1)*4096])
			return uint32(start), nil
		}
	}
	return 0, fmt.Errorf("sim: dom%d has no %d free contiguous pages", d.ID, n)
}

// FreeFrames returns frames to the allocator.
func (d *Domain) FreeFrames(start uint32, n int) {
	d.amu.Lock()
	defer d.amu.Unlock()
	for i := 0; i < n; i++ {
		d.used[int(start)+i] = false
	}
}

// GrantAccess fills a free grant entry: frame granted to dom, read-only
// unless writable. The flags are stored last, so the hypervisor never sees
// a half-written entry (as gnttab_grant_foreign_access orders it).
func (d *Domain) GrantAccess(dom uint32, frame uint32, writable bool) (uint32, error) {
	d.amu.Lock()
	if len(d.freeRefs) == 0 {
		d.amu.Unlock()
		return 0, fmt.Errorf("sim: dom%d grant table full", d.ID)
	}
	ref := d.freeRefs[len(d.freeRefs)-1]
	d.freeRefs = d.freeRefs[:len(d.freeRefs)-1]
	d.amu.Unlock()
	off := int(ref) * GrantEntrySize
	binary.LittleEndian.PutUint32(d.gt[off+4:], frame)
	flags := uint32(GTFPermitAccess)
	if !writable {
		flags |= GTFReadonly
	}
	storeWord(wordAt(d.gt, off), flags|dom<<16)
	return ref, nil
}

// InUse reports whether the grantee maps (or copies through) ref now:
// the reading or writing flag the hypervisor sets, which is what
// gnttab_try_end_foreign_access looks at.
func (d *Domain) InUse(ref uint32) bool {
	return loadWord(wordAt(d.gt, int(ref)*GrantEntrySize))&(GTFReading|GTFWriting) != 0
}

// ErrStillMapped is EndAccess's answer while the grantee maps the page.
var ErrStillMapped = errors.New("sim: grant still mapped by the grantee")

// EndAccess revokes a grant unless it is mapped: one compare-and-swap of
// the flags to 0 that fails if the hypervisor has set reading or writing,
// as gnttab_end_foreign_access_ref does. The ref is then free again.
func (d *Domain) EndAccess(ref uint32) error {
	w := wordAt(d.gt, int(ref)*GrantEntrySize)
	for {
		old := loadWord(w)
		if old&(GTFReading|GTFWriting) != 0 {
			return ErrStillMapped
		}
		if casWord(w, old, 0) {
			break
		}
	}
	d.amu.Lock()
	d.freeRefs = append(d.freeRefs, ref)
	d.amu.Unlock()
	return nil
}
