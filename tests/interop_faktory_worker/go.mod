module github.com/unifiedq/interop_faktory_worker

go 1.24.0

require github.com/contribsys/faktory_worker_go v1.7.0

require github.com/contribsys/faktory v1.8.0 // indirect
