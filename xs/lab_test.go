//go:build lab

package xs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

// The lab runs these inside dom0 against Xen's own C xenstored; without
// it they fail (the lab asked for Xen).

func labClients(t *testing.T) map[string]*Client {
	t.Helper()
	out := map[string]*Client{}
	c, err := Dial(SocketPath())
	if err != nil {
		t.Fatalf("no xenstored socket in the lab: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	out["socket"] = c
	d, err := OpenDevice("")
	if err != nil {
		t.Fatalf("no %s in the lab: %v", DeviceXenbus, err)
	}
	t.Cleanup(func() { d.Close() })
	out["xenbus"] = d
	return out
}

func TestLabXenStoreOperations(t *testing.T) {
	for name, c := range labClients(t) {
		t.Run(name, func(t *testing.T) {
			base := fmt.Sprintf("/pvusb-lab/%s-%d", name, os.Getpid())
			if err := c.WriteString(base+"/a/b", "hello"); err != nil {
				t.Fatal(err)
			}
			if v, err := c.ReadString(base + "/a/b"); err != nil || v != "hello" {
				t.Fatalf("read %q %v", v, err)
			}
			if err := c.Mkdir(base + "/dir"); err != nil {
				t.Fatal(err)
			}
			if names, err := c.Directory(base); err != nil || len(names) != 2 {
				t.Fatalf("directory %v %v", names, err)
			}
			if err := c.SetPerms(base+"/a/b", Perm{0, AccessNone}, Perm{1, AccessRead}); err != nil {
				t.Fatal(err)
			}
			if ps, err := c.GetPerms(base + "/a/b"); err != nil || len(ps) != 2 || ps[1] != (Perm{1, AccessRead}) {
				t.Fatalf("perms %v %v", ps, err)
			}
			if p, err := c.GetDomainPath(7); err != nil || p != "/local/domain/7" {
				t.Fatalf("domain path %q %v", p, err)
			}
			if _, err := c.Read(base + "/nope"); !errors.Is(err, ENOENT) {
				t.Fatalf("missing node: %v", err)
			}
			// Watches: the registration event, then a child change.
			w, err := c.Watch(base+"/a", "lab")
			if err != nil {
				t.Fatal(err)
			}
			next := func() Event {
				select {
				case e := <-w.Events:
					return e
				case <-time.After(20 * time.Second):
					t.Fatal("no watch event from xenstored")
				}
				return Event{}
			}
			if e := next(); e.Path != base+"/a" {
				t.Fatalf("first event %+v", e)
			}
			c.WriteString(base+"/a/c", "1")
			for e := next(); e.Path != base+"/a/c"; e = next() {
			}
			w.Unwatch()
			// A transaction that loses a conflict is retried.
			tries := 0
			err = c.Transaction(context.Background(), func(tx Handle) error {
				tries++
				v, err := tx.ReadString(base + "/a/b")
				if err != nil {
					return err
				}
				if tries == 1 {
					c.WriteString(base+"/a/b", "changed")
				}
				return tx.WriteString(base+"/copy", v)
			})
			if err != nil || tries < 2 {
				t.Fatalf("conflict not retried: %v after %d tries", err, tries)
			}
			if v, _ := c.ReadString(base + "/copy"); v != "changed" {
				t.Fatalf("transaction wrote %q", v)
			}
			if err := c.Rm(base); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: all operations, watch, conflict after %d tries", name, tries)
		})
	}
}
