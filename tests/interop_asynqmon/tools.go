//go:build tools

// Package tools pins asynqmon v0.7.2 (the asynq Web UI, latest release) for the tests:
// test_asynqmon.py builds github.com/hibiken/asynqmon/cmd/asynqmon from this module.
package tools

import _ "github.com/hibiken/asynqmon/cmd/asynqmon"
