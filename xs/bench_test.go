package xs

import (
	"io"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkReadRoundTrip is one XenStore READ over the unix socket.
// Reference: an echo of the same bytes over a unix socket, in the same run.
func BenchmarkReadRoundTrip(b *testing.B) {
	b.Run("xenstore-read", func(b *testing.B) {
		_, _, c := testServer(b, DefaultQuotas)
		c.WriteString("/local/domain/1/device/vusb/0/state", "4")
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Read("/local/domain/1/device/vusb/0/state"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reference-unix-echo", func(b *testing.B) {
		sock := filepath.Join(b.TempDir(), "echo.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		go func() {
			s, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64)
			for {
				n, err := s.Read(buf)
				if err != nil {
					return
				}
				s.Write(buf[:n])
			}
		}()
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		msg := make([]byte, HeaderSize+len("/local/domain/1/device/vusb/0/state")+1)
		reply := make([]byte, len(msg))
		b.ReportAllocs()
		for b.Loop() {
			c.Write(msg)
			if _, err := io.ReadFull(c, reply); err != nil {
				b.Fatal(err)
			}
		}
	})
}
