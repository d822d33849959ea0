package xs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

func TestPermissionsAcrossDomains(t *testing.T) {
	s, _, c0 := testServer(t, DefaultQuotas)
	s.IntroduceDomain(1)
	s.IntroduceDomain(2)
	d1, d2 := domClient(t, s, 1), domClient(t, s, 2)

	// libxl's layout: frontend dir owned by the guest, readable by the backend.
	fe := "/local/domain/1/device/vusb/0"
	if err := c0.WriteString(fe+"/state", "1"); err != nil {
		t.Fatal(err)
	}
	if err := c0.SetPerms(fe, Perm{1, AccessNone}, Perm{0, AccessRead}); err != nil {
		t.Fatal(err)
	}
	if err := c0.SetPerms(fe+"/state", Perm{1, AccessNone}, Perm{0, AccessRead}); err != nil {
		t.Fatal(err)
	}
	if err := d1.WriteString(fe+"/state", "4"); err != nil {
		t.Errorf("owner cannot write: %v", err)
	}
	if err := d1.WriteString(fe+"/urb-ring-ref", "8"); err != nil {
		t.Errorf("owner cannot create: %v", err)
	}
	if ps, _ := c0.GetPerms(fe + "/urb-ring-ref"); ps[0].Dom != 1 {
		t.Errorf("created node not owned by its unprivileged creator: %v", ps)
	}
	if _, err := d2.Read(fe + "/state"); !errors.Is(err, EACCES) {
		t.Errorf("dom2 reads dom1's node: %v", err)
	}
	if err := d2.WriteString(fe+"/state", "6"); !errors.Is(err, EACCES) {
		t.Errorf("dom2 writes dom1's node: %v", err)
	}
	if err := d1.SetPerms(fe+"/state", Perm{2, AccessNone}); !errors.Is(err, EPERM) {
		t.Errorf("dom1 gives its node away: %v", err)
	}
	if err := d1.SetPerms(fe+"/state", Perm{1, AccessNone}, Perm{2, AccessRead}); err != nil {
		t.Errorf("owner changes its own perms: %v", err)
	}
	if v, err := d2.ReadString(fe + "/state"); err != nil || v != "4" {
		t.Errorf("dom2 after r2 granted: %q %v", v, err)
	}
	// Relative paths live under the connection's home.
	if v, err := d1.ReadString("device/vusb/0/state"); err != nil || v != "4" {
		t.Errorf("relative read: %q %v", v, err)
	}
	if _, err := d1.Read("/local/domain/0"); err != nil {
		t.Log("dom0's home unreadable to dom1, as expected:", err)
	}
	if p, err := d1.GetDomainPath(1); err != nil || p != "/local/domain/1" {
		t.Errorf("get-domain-path %q %v", p, err)
	}
}

func TestWatches(t *testing.T) {
	s, _, c0 := testServer(t, DefaultQuotas)
	s.IntroduceDomain(1)
	d1 := domClient(t, s, 1)

	w, err := c0.Watch("/a/b", "tok")
	if err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, w); e.Path != "/a/b" || e.Token != "tok" {
		t.Fatalf("initial event %+v", e)
	}
	c0.WriteString("/a/b/c/d", "x")
	if e := nextEvent(t, w); e.Path != "/a/b/c/d" {
		t.Errorf("descendant write: %+v", e)
	}
	c0.WriteString("/a/other", "x")
	noEvent(t, c0, w)
	c0.Rm("/a")
	if e := nextEvent(t, w); e.Path != "/a/b" {
		t.Errorf("removal of an ancestor fires with the watch path: %+v", e)
	}

	// Relative watch of an unprivileged domain: relative event paths, and
	// only nodes it may read.
	c0.Mkdir("/local/domain/1/data")
	c0.SetPerms("/local/domain/1/data", Perm{1, AccessNone})
	rw, err := d1.Watch("data", "rel")
	if err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, rw); e.Path != "data" {
		t.Fatalf("initial relative event %+v", e)
	}
	c0.WriteString("/local/domain/1/data/x", "1")
	if e := nextEvent(t, rw); e.Path != "data/x" {
		t.Errorf("relative event %+v", e)
	}
	c0.WriteString("/local/domain/1/data/secret", "1")
	c0.SetPerms("/local/domain/1/data/secret", Perm{0, AccessNone})
	c0.WriteString("/local/domain/1/data/secret", "2")
	if e := nextEvent(t, rw); e.Path != "data/secret" {
		t.Errorf("first write (inherited readable perms): %+v", e)
	}
	// set-perms fires for old readers, then the write is hidden.
	if e := nextEvent(t, rw); e.Path != "data/secret" {
		t.Errorf("set-perms event %+v", e)
	}
	noEvent(t, d1, rw)

	// Special watches reach dom0 only.
	sw, _ := c0.Watch(IntroduceDomain, "intro")
	nextEvent(t, sw)
	rel, _ := c0.Watch(ReleaseDomain, "rel")
	nextEvent(t, rel)
	dsw, _ := d1.Watch(IntroduceDomain, "intro")
	nextEvent(t, dsw) // the registration event is always sent
	s.IntroduceDomain(7)
	if e := nextEvent(t, sw); e.Path != IntroduceDomain {
		t.Errorf("@introduceDomain %+v", e)
	}
	noEvent(t, d1, dsw)
	s.ReleaseDomain(7)
	if e := nextEvent(t, rel); e.Path != ReleaseDomain {
		t.Errorf("@releaseDomain %+v", e)
	}

	if err := w.Unwatch(); err != nil {
		t.Fatal(err)
	}
	c0.WriteString("/a/b", "again")
	if _, ok := <-w.Events; ok {
		t.Error("event after unwatch")
	}
	if _, err := c0.Watch("/x", "intro"); err == nil {
		t.Error("duplicate token accepted")
	}
}

func TestTransactions(t *testing.T) {
	_, _, c := testServer(t, DefaultQuotas)
	ctx := context.Background()
	c.WriteString("/ring/conn", "0")

	// Commit: the three ring keys appear together, one event each.
	w, _ := c.Watch("/fe", "fe")
	nextEvent(t, w)
	err := c.Transaction(ctx, func(tx Handle) error {
		for _, k := range []string{"urb-ring-ref", "conn-ring-ref", "event-channel"} {
			if err := tx.WriteString("/fe/"+k, "9"); err != nil {
				return err
			}
		}
		if ok, _ := c.Exists("/fe/urb-ring-ref"); ok {
			return errors.New("transaction write visible outside before commit")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		nextEvent(t, w)
	}

	// Conflict: a transaction that read a node someone changed gets EAGAIN
	// at commit, and Transaction redoes it.
	tries := 0
	err = c.Transaction(ctx, func(tx Handle) error {
		tries++
		v, err := tx.ReadString("/ring/conn")
		if err != nil {
			return err
		}
		if tries == 1 {
			c.WriteString("/ring/conn", "changed") // outside the transaction
		}
		return tx.WriteString("/ring/copy", v)
	})
	if err != nil || tries != 2 {
		t.Fatalf("conflict: %v after %d tries", err, tries)
	}
	if v, _ := c.ReadString("/ring/copy"); v != "changed" {
		t.Errorf("redone transaction wrote %q", v)
	}

	// A raw commit that conflicts answers EAGAIN on the wire.
	id := startTx(t, c)
	if _, err := c.roundTrip(ctx, OpRead, id, joinNul("/ring/conn")); err != nil {
		t.Fatal(err)
	}
	c.Rm("/ring/conn")
	if _, err := c.roundTrip(ctx, OpTransactionEnd, id, joinNul("T")); !errors.Is(err, EAGAIN) {
		t.Errorf("commit after a removal: %v", err)
	}
	// Abort discards.
	id = startTx(t, c)
	c.roundTrip(ctx, OpWrite, id, append(joinNul("/aborted"), 'x'))
	c.roundTrip(ctx, OpTransactionEnd, id, joinNul("F"))
	if ok, _ := c.Exists("/aborted"); ok {
		t.Error("aborted write visible")
	}
	if _, err := c.roundTrip(ctx, OpRead, 12345, joinNul("/")); !errors.Is(err, ENOENT) {
		t.Errorf("unknown transaction: %v", err)
	}
	if _, err := c.roundTrip(ctx, OpTransactionStart, id, []byte{0}); !errors.Is(err, EBUSY) {
		t.Errorf("nested transaction: %v", err)
	}
	// An error in fn aborts.
	boom := errors.New("boom")
	if err := c.Transaction(ctx, func(tx Handle) error { tx.WriteString("/never", "1"); return boom }); err != boom {
		t.Errorf("fn error: %v", err)
	}
	if ok, _ := c.Exists("/never"); ok {
		t.Error("write of a failed transaction visible")
	}
}

func startTx(t *testing.T, c *Client) uint32 {
	t.Helper()
	v, err := c.roundTrip(context.Background(), OpTransactionStart, 0, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	id, err := parseUint(trimNul(v), 1<<32-1)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(id)
}

func TestQuotas(t *testing.T) {
	q := Quotas{MaxValueSize: 100, MaxNodesPerDomain: 5, MaxWatchesPerConn: 3, MaxTransactionsConn: 2, MaxQueuedEvents: 4096}
	s, _, c0 := testServer(t, q)
	s.IntroduceDomain(1)
	c0.Mkdir("/local/domain/1/q")
	c0.SetPerms("/local/domain/1/q", Perm{1, AccessNone})
	d1 := domClient(t, s, 1)
	if err := d1.Write("q/big", make([]byte, 101)); !errors.Is(err, ENOSPC) {
		t.Errorf("oversized value: %v", err)
	}
	if err := c0.Write("/big", make([]byte, 3000)); err != nil {
		t.Errorf("dom0 is exempt: %v", err)
	}
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		err = d1.WriteString(fmt.Sprintf("q/n%d", i), "x")
	}
	if !errors.Is(err, ENOSPC) {
		t.Errorf("node quota: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := d1.Watch(fmt.Sprintf("q/w%d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d1.Watch("q/w9", "9"); !errors.Is(err, E2BIG) {
		t.Errorf("watch quota: %v", err)
	}
	startTx(t, d1)
	startTx(t, d1)
	if _, err := d1.roundTrip(context.Background(), OpTransactionStart, 0, []byte{0}); !errors.Is(err, ENOSPC) {
		t.Errorf("transaction quota: %v", err)
	}
}

func TestHostileInput(t *testing.T) {
	s, _, c0 := testServer(t, DefaultQuotas)
	c0.WriteString("/ok", "1")
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		op      Op
		payload []byte
		want    Errno
	}{
		{"unknown type", Op(99), nil, EINVAL},
		{"read without NUL", OpRead, []byte("/ok"), EINVAL},
		{"read with two strings", OpRead, joinNul("/ok", "/ok"), EINVAL},
		{"embedded NUL in path", OpRead, []byte("/o\x00k\x00"), EINVAL},
		{"bad characters", OpRead, joinNul("/a b"), EINVAL},
		{"double slash", OpWrite, append(joinNul("/a//b"), 'x'), EINVAL},
		{"trailing slash", OpMkdir, joinNul("/a/"), EINVAL},
		{"too long", OpRead, joinNul("/" + strings.Repeat("a", AbsPathMax)), EINVAL},
		{"rm root", OpRm, joinNul("/"), EINVAL},
		{"write special", OpWrite, append(joinNul(IntroduceDomain), 'x'), EINVAL},
		{"bad perm", OpSetPerms, joinNul("/ok", "x1"), EINVAL},
		{"empty payload write", OpWrite, nil, EINVAL},
		{"bad domid", OpGetDomainPath, joinNul("01"), EINVAL},
		{"commit garbage", OpTransactionEnd, joinNul("Q"), EINVAL},
	} {
		_, err := c0.roundTrip(ctx, tc.op, 0, tc.payload)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// An oversized message closes that connection; others go on.
	a, b := net.Pipe()
	go s.ServeConn(a, 0)
	var hb [HeaderSize]byte
	Header{Op: OpWrite, ReqID: 1, Len: PayloadMax + 1}.Encode(&hb)
	go b.Write(hb[:])
	if _, err := ReadMsg(b); err == nil {
		t.Error("connection survived an oversized message")
	}
	// A truncated message followed by a close: the server drops it.
	a2, b2 := net.Pipe()
	go s.ServeConn(a2, 0)
	Header{Op: OpRead, ReqID: 1, Len: 10}.Encode(&hb)
	b2.Write(hb[:])
	b2.Write([]byte("/o"))
	b2.Close()
	if v, err := c0.ReadString("/ok"); err != nil || v != "1" {
		t.Errorf("other connection broken: %q %v", v, err)
	}
}

func TestManyRequestsInFlight(t *testing.T) {
	_, _, c := testServer(t, DefaultQuotas)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				p := fmt.Sprintf("/par/%d/%d", g, i)
				if err := c.WriteString(p, p); err != nil {
					errs <- err
					return
				}
				if v, err := c.ReadString(p); err != nil || v != p {
					errs <- fmt.Errorf("read %s: %q %v", p, v, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDecoder(t *testing.T) {
	_, _, c := testServer(t, DefaultQuotas)
	be := "/local/domain/0/backend/vusb/1/0"
	for k, v := range map[string]string{"num-ports": "8", "usb-ver": "2", "bad": "0099", "huge": "99", "neg": "-1"} {
		c.WriteString(be+"/"+k, v)
	}
	d := NewDecoder(c.Handle, be)
	if n, v := d.Uint("num-ports", 1, 31), d.Uint("usb-ver", 1, 2); n != 8 || v != 2 || d.Err() != nil {
		t.Fatalf("%d %d %v", n, v, d.Err())
	}
	for _, k := range []string{"bad", "huge", "neg", "missing"} {
		d := NewDecoder(c.Handle, be)
		d.Uint(k, 1, 31)
		if d.Err() == nil || !strings.Contains(d.Err().Error(), k) {
			t.Errorf("%s: %v", k, d.Err())
		}
		if d.Uint("num-ports", 1, 31) != 0 {
			t.Error("decoder not sticky")
		}
	}
	if d := NewDecoder(c.Handle, be); d.OptionalString("protocol", "x86_64-abi") != "x86_64-abi" || d.Err() != nil {
		t.Error("optional default")
	}
}

func TestReleaseDomainClosesItsConnections(t *testing.T) {
	s, _, _ := testServer(t, DefaultQuotas)
	s.IntroduceDomain(3)
	d3 := domClient(t, s, 3)
	w, err := d3.Watch("x", "t")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, w)
	s.ReleaseDomain(3)
	<-d3.Done()
	if _, err := d3.Read("x"); !errors.Is(err, ErrClosed) {
		t.Errorf("request after release: %v", err)
	}
	if _, ok := <-w.Events; ok {
		t.Error("watch events still open")
	}
}
