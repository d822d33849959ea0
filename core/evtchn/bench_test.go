package evtchn_test

import (
	"context"
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkNotifyWakeRoundTrip: dom1 notifies, dom0 wakes, unmasks and
// notifies back, dom1 wakes and unmasks: one event-channel round trip on
// the simulated hypervisor. Reference: the same ping-pong over two bare
// eventfds read through Go's netpoller, in the same run.
func BenchmarkNotifyWakeRoundTrip(b *testing.B) {
	b.Run("sim-evtchn", func(b *testing.B) {
		back, front, _, _ := pair(b)
		fp, _ := front.BindUnbound(0)
		bp, err := back.BindInterdomain(1, fp)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		go func() {
			for {
				p, err := back.Wait(ctx)
				if err != nil {
					return
				}
				back.Unmask(p)
				back.Notify(bp)
			}
		}()
		b.ReportAllocs()
		for b.Loop() {
			front.Notify(fp)
			p, err := front.Wait(ctx)
			if err != nil {
				b.Fatal(err)
			}
			front.Unmask(p)
		}
	})
	b.Run("reference-eventfd", func(b *testing.B) {
		mk := func() *os.File {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			if err != nil {
				b.Fatal(err)
			}
			return os.NewFile(uintptr(fd), "eventfd")
		}
		ping, pong := mk(), mk()
		defer ping.Close()
		defer pong.Close()
		one := binary.LittleEndian.AppendUint64(nil, 1)
		go func() {
			var buf [8]byte
			for {
				if _, err := ping.Read(buf[:]); err != nil {
					return
				}
				pong.Write(one)
			}
		}()
		var buf [8]byte
		b.ReportAllocs()
		for b.Loop() {
			ping.Write(one)
			if _, err := pong.Read(buf[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
