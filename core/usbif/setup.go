package usbif

import (
	"fmt"
	"strings"
)

// SetupPacket is the 8-byte USB SETUP packet (USB 2.0 §9.3) carried in
// u.ctrl of a control request, in USB byte order (little-endian).
type SetupPacket struct {
	RequestType uint8  // bmRequestType
	Request     uint8  // bRequest
	Value       uint16 // wValue
	Index       uint16 // wIndex
	Length      uint16 // wLength
}

// bmRequestType fields (USB 2.0 table 9-2).
const (
	RequestDirIn = 0x80

	RequestTypeMask     = 0x60
	RequestTypeStandard = 0x00
	RequestTypeClass    = 0x20
	RequestTypeVendor   = 0x40

	RecipientMask      = 0x1f
	RecipientDevice    = 0x00
	RecipientInterface = 0x01
	RecipientEndpoint  = 0x02
	RecipientOther     = 0x03
)

// Standard requests (bRequest, USB 2.0 table 9-4).
const (
	ReqGetStatus        = 0x00
	ReqClearFeature     = 0x01
	ReqSetFeature       = 0x03
	ReqSetAddress       = 0x05
	ReqGetDescriptor    = 0x06
	ReqSetDescriptor    = 0x07
	ReqGetConfiguration = 0x08
	ReqSetConfiguration = 0x09
	ReqGetInterface     = 0x0a
	ReqSetInterface     = 0x0b
	ReqSynchFrame       = 0x0c
)

// Descriptor types (wValue high byte of GET_DESCRIPTOR).
const (
	DescDevice              = 0x01
	DescConfiguration       = 0x02
	DescString              = 0x03
	DescInterface           = 0x04
	DescEndpoint            = 0x05
	DescDeviceQualifier     = 0x06
	DescOtherSpeedConfig    = 0x07
	DescInterfacePower      = 0x08
	DescOTG                 = 0x09
	DescDebug               = 0x0a
	DescInterfaceAssoc      = 0x0b
	DescBOS                 = 0x0f
	DescHID                 = 0x21
	DescReport              = 0x22
	DescHub                 = 0x29
	FeatureEndpointHalt     = 0x00 // CLEAR_FEATURE wValue for an endpoint
	FeatureDeviceRemoteWake = 0x01
	FeatureTestMode         = 0x02
)

// Offsets in the SETUP packet.
const (
	offSetupRequestType = 0
	offSetupRequest     = 1
	offSetupValue       = 2
	offSetupIndex       = 4
	offSetupLength      = 6
)

// DecodeSetup reads a SETUP packet from 8 bytes.
func DecodeSetup(b *[8]byte) SetupPacket {
	return SetupPacket{
		RequestType: b[offSetupRequestType],
		Request:     b[offSetupRequest],
		Value:       le.Uint16(b[offSetupValue:]),
		Index:       le.Uint16(b[offSetupIndex:]),
		Length:      le.Uint16(b[offSetupLength:]),
	}
}

// Encode writes the SETUP packet into 8 bytes.
func (s SetupPacket) Encode(b *[8]byte) {
	b[offSetupRequestType] = s.RequestType
	b[offSetupRequest] = s.Request
	le.PutUint16(b[offSetupValue:], s.Value)
	le.PutUint16(b[offSetupIndex:], s.Index)
	le.PutUint16(b[offSetupLength:], s.Length)
}

// In reports a device-to-host data stage.
func (s SetupPacket) In() bool { return s.RequestType&RequestDirIn != 0 }

// Standard reports a standard (not class or vendor) request.
func (s SetupPacket) Standard() bool { return s.RequestType&RequestTypeMask == RequestTypeStandard }

// Recipient is the bmRequestType recipient field.
func (s SetupPacket) Recipient() uint8 { return s.RequestType & RecipientMask }

// Is reports a standard request with this bRequest to this recipient, the
// test an intercepting backend must make: QEMU matches bRequest alone and
// so swallows class requests that happen to share the number (§11 #5).
func (s SetupPacket) Is(request, recipient uint8) bool {
	return s.Standard() && s.Request == request && s.Recipient() == recipient
}

var requestNames = [...]string{
	ReqGetStatus:        "GET_STATUS",
	ReqClearFeature:     "CLEAR_FEATURE",
	2:                   "",
	ReqSetFeature:       "SET_FEATURE",
	4:                   "",
	ReqSetAddress:       "SET_ADDRESS",
	ReqGetDescriptor:    "GET_DESCRIPTOR",
	ReqSetDescriptor:    "SET_DESCRIPTOR",
	ReqGetConfiguration: "GET_CONFIGURATION",
	ReqSetConfiguration: "SET_CONFIGURATION",
	ReqGetInterface:     "GET_INTERFACE",
	ReqSetInterface:     "SET_INTERFACE",
	ReqSynchFrame:       "SYNCH_FRAME",
}

// RequestName names a standard bRequest, or "" when it is not one.
func RequestName(req uint8) string {
	if int(req) < len(requestNames) {
		return requestNames[req]
	}
	return ""
}

// DescriptorName names a descriptor type, or "" when unknown.
func DescriptorName(t uint8) string {
	switch t {
	case DescDevice:
		return "DEVICE"
	case DescConfiguration:
		return "CONFIGURATION"
	case DescString:
		return "STRING"
	case DescInterface:
		return "INTERFACE"
	case DescEndpoint:
		return "ENDPOINT"
	case DescDeviceQualifier:
		return "DEVICE_QUALIFIER"
	case DescOtherSpeedConfig:
		return "OTHER_SPEED_CONFIGURATION"
	case DescInterfacePower:
		return "INTERFACE_POWER"
	case DescOTG:
		return "OTG"
	case DescDebug:
		return "DEBUG"
	case DescInterfaceAssoc:
		return "INTERFACE_ASSOCIATION"
	case DescBOS:
		return "BOS"
	case DescHID:
		return "HID"
	case DescReport:
		return "REPORT"
	case DescHub:
		return "HUB"
	}
	return ""
}

// String explains the packet the way a person reads a trace, e.g.
// "GET_DESCRIPTOR(DEVICE) wLength=64", "SET_ADDRESS(2)",
// "CLEAR_FEATURE(ENDPOINT_HALT) ep=0x81", "CLASS OUT req=0x09 wValue=0x0200 wIndex=0 wLength=8".
// It is for display only and allocates.
func (s SetupPacket) String() string {
	name := RequestName(s.Request)
	if !s.Standard() || name == "" {
		kind := "CLASS"
		switch s.RequestType & RequestTypeMask {
		case RequestTypeVendor:
			kind = "VENDOR"
		case RequestTypeStandard:
			kind = "STANDARD"
		case 0x60:
			kind = "RESERVED"
		}
		dir := "OUT"
		if s.In() {
			dir = "IN"
		}
		return fmt.Sprintf("%s %s %s req=0x%02x wValue=0x%04x wIndex=0x%04x wLength=%d",
			kind, dir, recipientName(s.Recipient()), s.Request, s.Value, s.Index, s.Length)
	}
	var b strings.Builder
	b.WriteString(name)
	switch s.Request {
	case ReqGetDescriptor, ReqSetDescriptor:
		dt, di := uint8(s.Value>>8), uint8(s.Value)
		dn := DescriptorName(dt)
		if dn == "" {
			dn = fmt.Sprintf("0x%02x", dt)
		}
		switch {
		case dt == DescString && di != 0:
			fmt.Fprintf(&b, "(STRING %d, lang 0x%04x)", di, s.Index)
		case di != 0:
			fmt.Fprintf(&b, "(%s %d)", dn, di)
		default:
			fmt.Fprintf(&b, "(%s)", dn)
		}
		if s.Recipient() != RecipientDevice {
			fmt.Fprintf(&b, " %s=%d", recipientName(s.Recipient()), s.Index)
		}
	case ReqSetAddress, ReqSetConfiguration:
		fmt.Fprintf(&b, "(%d)", s.Value)
	case ReqSetInterface:
		fmt.Fprintf(&b, "(interface %d, alt %d)", s.Index, s.Value)
	case ReqClearFeature, ReqSetFeature:
		switch {
		case s.Recipient() == RecipientEndpoint && s.Value == FeatureEndpointHalt:
			fmt.Fprintf(&b, "(ENDPOINT_HALT) ep=0x%02x", s.Index)
		case s.Recipient() == RecipientDevice && s.Value == FeatureDeviceRemoteWake:
			b.WriteString("(DEVICE_REMOTE_WAKEUP)")
		case s.Recipient() == RecipientDevice && s.Value == FeatureTestMode:
			fmt.Fprintf(&b, "(TEST_MODE %d)", s.Index>>8)
		default:
			fmt.Fprintf(&b, "(%d) %s=%d", s.Value, recipientName(s.Recipient()), s.Index)
		}
	case ReqGetStatus, ReqGetInterface, ReqSynchFrame:
		if s.Recipient() != RecipientDevice {
			fmt.Fprintf(&b, " %s=%d", recipientName(s.Recipient()), s.Index)
		}
	}
	if s.In() || s.Length != 0 {
		fmt.Fprintf(&b, " wLength=%d", s.Length)
	}
	return b.String()
}

func recipientName(r uint8) string {
	switch r {
	case RecipientDevice:
		return "device"
	case RecipientInterface:
		return "interface"
	case RecipientEndpoint:
		return "endpoint"
	case RecipientOther:
		return "other"
	}
	return fmt.Sprintf("recipient%d", r)
}
