package grant_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/grant"
)

// BenchmarkMapUnmap16 maps and unmaps 16 granted pages (a full 64 KiB URB)
// through the simulated hypervisor. Reference: mmap and munmap of 16
// pages of a memfd, one page at a time, as the mapper does, in the same run.
func BenchmarkMapUnmap16(b *testing.B) {
	b.Run("sim-map+unmap", func(b *testing.B) {
		d0, d1 := domains(b)
		gr, err := grant.NewSimGranter(d1).Grant(0, 16, true)
		if err != nil {
			b.Fatal(err)
		}
		m := grant.NewSimMapper(d0)
		b.ReportAllocs()
		for b.Loop() {
			mp, err := m.Map(1, gr.Refs(), true)
			if err != nil {
				b.Fatal(err)
			}
			mp.Bytes()[0] = 1
			if err := mp.Unmap(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reference-mmap-memfd", func(b *testing.B) {
		fd, err := unix.MemfdCreate("bench", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		unix.Ftruncate(fd, 16*4096)
		b.ReportAllocs()
		for b.Loop() {
			var pages [16][]byte
			for i := range pages {
				p, err := unix.Mmap(fd, int64(i)*4096, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
				if err != nil {
					b.Fatal(err)
				}
				p[0] = 1
				pages[i] = p
			}
			for _, p := range pages {
				unix.Munmap(p)
			}
		}
	})
}
