module github.com/unifiedq/interop_faktory

go 1.24.0

require github.com/contribsys/faktory v1.9.3
