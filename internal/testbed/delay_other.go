//go:build !linux

package testbed

import (
	"errors"
	"time"
)

const delayQueueNo = 7

type delayer struct{}

func newDelayer(int, time.Duration) (*delayer, error) {
	return nil, errors.New("testbed: latency emulation needs linux")
}
func (*delayer) setDelay(time.Duration) {}
func (*delayer) close() error           { return nil }
