package usbfs

import (
	"bytes"
	"testing"

	"github.com/pvusb/pvusb/internal/ctest"
)

const abiC = `
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/usbdevice_fs.h>
#define P(n, x) printf("%s %lld\n", n, (long long)(x))
static void dump(const char *n, const void *p, size_t len) {
  const unsigned char *b = p; printf("%s 0x", n);
  for (size_t i = 0; i < len; i++) printf("%02x", b[i]);
  printf("\n");
}
int main(int argc, char **argv) {
  if (argc > 1) {
    struct { struct usbdevfs_urb u; struct usbdevfs_iso_packet_desc d[2]; } x;
    memset(&x, 0, sizeof x);
    x.u.type = USBDEVFS_URB_TYPE_ISO; x.u.endpoint = 0x83; x.u.status = -71;
    x.u.flags = USBDEVFS_URB_ISO_ASAP | USBDEVFS_URB_SHORT_NOT_OK; x.u.buffer = (void *)0x7f0011223344ULL;
    x.u.buffer_length = 3072; x.u.actual_length = 1000; x.u.start_frame = 7; x.u.number_of_packets = 2;
    x.u.error_count = 1; x.u.usercontext = (void *)0xdeadbeefcafeULL;
    x.d[0].length = 1024; x.d[0].actual_length = 1000; x.d[0].status = 0;
    x.d[1].length = 2048; x.d[1].actual_length = 0; x.d[1].status = (unsigned)-18;
    dump("urb", &x, sizeof x.u + 2 * sizeof x.d[0]);
    struct usbdevfs_setinterface si = { .interface = 1, .altsetting = 2 };
    dump("setinterface", &si, sizeof si);
    struct usbdevfs_disconnect_claim dc; memset(&dc, 0, sizeof dc);
    dc.interface = 3; dc.flags = USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER; strcpy(dc.driver, "usbfs");
    dump("disconnect_claim", &dc, sizeof dc);
    struct usbdevfs_ioctl io = { .ifno = 2, .ioctl_code = USBDEVFS_CONNECT, .data = NULL };
    dump("ioctl", &io, sizeof io);
    return 0;
  }
  P("USBDEVFS_CONTROL", USBDEVFS_CONTROL); P("USBDEVFS_SETINTERFACE", USBDEVFS_SETINTERFACE);
  P("USBDEVFS_SETCONFIGURATION", USBDEVFS_SETCONFIGURATION); P("USBDEVFS_SUBMITURB", USBDEVFS_SUBMITURB);
  P("USBDEVFS_DISCARDURB", USBDEVFS_DISCARDURB); P("USBDEVFS_REAPURBNDELAY", USBDEVFS_REAPURBNDELAY);
  P("USBDEVFS_CLAIMINTERFACE", USBDEVFS_CLAIMINTERFACE); P("USBDEVFS_RELEASEINTERFACE", USBDEVFS_RELEASEINTERFACE);
  P("USBDEVFS_RESET", USBDEVFS_RESET); P("USBDEVFS_CLEAR_HALT", USBDEVFS_CLEAR_HALT);
  P("USBDEVFS_GET_CAPABILITIES", USBDEVFS_GET_CAPABILITIES); P("USBDEVFS_DISCONNECT_CLAIM", USBDEVFS_DISCONNECT_CLAIM);
  P("USBDEVFS_GET_SPEED", USBDEVFS_GET_SPEED); P("USBDEVFS_IOCTL", USBDEVFS_IOCTL);
  P("USBDEVFS_CONNECT", USBDEVFS_CONNECT); P("sizeof.ioctl", sizeof(struct usbdevfs_ioctl));
  P("sizeof.urb", sizeof(struct usbdevfs_urb)); P("sizeof.iso", sizeof(struct usbdevfs_iso_packet_desc));
  P("sizeof.ctrltransfer", sizeof(struct usbdevfs_ctrltransfer));
  P("sizeof.disconnect_claim", sizeof(struct usbdevfs_disconnect_claim));
  P("offset.urb.buffer", offsetof(struct usbdevfs_urb, buffer));
  P("offset.urb.usercontext", offsetof(struct usbdevfs_urb, usercontext));
  P("offset.urb.iso", offsetof(struct usbdevfs_urb, iso_frame_desc));
  P("USBDEVFS_URB_SHORT_NOT_OK", USBDEVFS_URB_SHORT_NOT_OK); P("USBDEVFS_URB_ZERO_PACKET", USBDEVFS_URB_ZERO_PACKET);
  P("USBDEVFS_URB_ISO_ASAP", USBDEVFS_URB_ISO_ASAP); P("USBDEVFS_URB_TYPE_BULK", USBDEVFS_URB_TYPE_BULK);
  P("USBDEVFS_URB_TYPE_CONTROL", USBDEVFS_URB_TYPE_CONTROL); P("USBDEVFS_URB_TYPE_INTERRUPT", USBDEVFS_URB_TYPE_INTERRUPT);
  P("USBDEVFS_URB_TYPE_ISO", USBDEVFS_URB_TYPE_ISO);
  P("USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER", USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER);
  P("USBDEVFS_CAP_ZERO_PACKET", USBDEVFS_CAP_ZERO_PACKET); P("USBDEVFS_CAP_NO_PACKET_SIZE_LIM", USBDEVFS_CAP_NO_PACKET_SIZE_LIM);
  P("USBDEVFS_CAP_REAP_AFTER_DISCONNECT", USBDEVFS_CAP_REAP_AFTER_DISCONNECT);
  return 0;
}`

func TestABIMatchesLinuxHeader(t *testing.T) {
	exe := ctest.Build(t, "usbfs_abi", abiC)
	ctest.Compare(t, ctest.Values(t, exe), map[string]int64{
		"USBDEVFS_CONTROL": int64(IoctlControl), "USBDEVFS_SETINTERFACE": int64(IoctlSetInterface),
		"USBDEVFS_SETCONFIGURATION": int64(IoctlSetConfiguration), "USBDEVFS_SUBMITURB": int64(IoctlSubmitURB),
		"USBDEVFS_DISCARDURB": int64(IoctlDiscardURB), "USBDEVFS_REAPURBNDELAY": int64(IoctlReapURBNDelay),
		"USBDEVFS_CLAIMINTERFACE": int64(IoctlClaimInterface), "USBDEVFS_RELEASEINTERFACE": int64(IoctlReleaseInterface),
		"USBDEVFS_RESET": int64(IoctlReset), "USBDEVFS_CLEAR_HALT": int64(IoctlClearHalt),
		"USBDEVFS_GET_CAPABILITIES": int64(IoctlGetCapabilities), "USBDEVFS_DISCONNECT_CLAIM": int64(IoctlDisconnectClaim),
		"USBDEVFS_GET_SPEED": int64(IoctlGetSpeed), "USBDEVFS_IOCTL": int64(IoctlIoctl),
		"USBDEVFS_CONNECT": int64(IoctlConnect), "sizeof.ioctl": ioctlArgSize,
		"sizeof.urb": URBSize, "sizeof.iso": IsoPacketDescSize, "sizeof.ctrltransfer": ctrlTransferSize,
		"sizeof.disconnect_claim": disconnectClaimLen, "offset.urb.buffer": offBuffer,
		"offset.urb.usercontext": offUserContext, "offset.urb.iso": URBSize,
		"USBDEVFS_URB_SHORT_NOT_OK": URBShortNotOK, "USBDEVFS_URB_ZERO_PACKET": URBZeroPacket,
		"USBDEVFS_URB_ISO_ASAP": URBISOASAP, "USBDEVFS_URB_TYPE_BULK": URBTypeBulk,
		"USBDEVFS_URB_TYPE_CONTROL": URBTypeControl, "USBDEVFS_URB_TYPE_INTERRUPT": URBTypeInterrupt,
		"USBDEVFS_URB_TYPE_ISO": URBTypeIso, "USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER": DisconnectClaimExceptDriver,
		"USBDEVFS_CAP_ZERO_PACKET": CapZeroPacket, "USBDEVFS_CAP_NO_PACKET_SIZE_LIM": CapNoPacketSizeLim,
		"USBDEVFS_CAP_REAP_AFTER_DISCONNECT": CapReapAfterDisconnect,
	})
	c := ctest.HexArgs(t, exe, "bytes")
	b := make([]byte, URBSize+2*IsoPacketDescSize)
	u := URB{Type: URBTypeIso, Endpoint: 0x83, Status: -71, Flags: URBISOASAP | URBShortNotOK, Buffer: 0x7f0011223344,
		BufferLength: 3072, ActualLength: 1000, StartFrame: 7, Packets: 2, ErrorCount: 1, UserContext: 0xdeadbeefcafe}
	u.Encode(b)
	EncodeIso(b, 0, IsoPacket{1024, 1000, 0})
	EncodeIso(b, 1, IsoPacket{2048, 0, uint32(0xffffffee)})
	if !bytes.Equal(b, c["urb"]) {
		t.Errorf("urb:\n go % x\n  c % x", b, c["urb"])
	}
	var back URB
	back.Decode(c["urb"])
	if back != u || DecodeIso(c["urb"], 1) != (IsoPacket{2048, 0, 0xffffffee}) {
		t.Errorf("decode of C bytes %+v", back)
	}
	scratch := make([]byte, 512)
	if !bytes.Equal(SetInterfaceArg(scratch, 1, 2), c["setinterface"]) {
		t.Error("setinterface")
	}
	for i := range scratch {
		scratch[i] = 0xee // the encoders must clear what they do not set
	}
	if dc := DisconnectClaimArg(scratch, 3, DisconnectClaimExceptDriver, "usbfs"); !bytes.Equal(dc, c["disconnect_claim"]) {
		t.Errorf("disconnect_claim:\n go % x\n  c % x", dc[:16], c["disconnect_claim"][:16])
	}
	if io := IoctlArg(scratch, 2, IoctlConnect); !bytes.Equal(io, c["ioctl"]) {
		t.Errorf("ioctl:\n go % x\n  c % x", io, c["ioctl"])
	}
}
