module github.com/pvusb/pvusb

go 1.26
