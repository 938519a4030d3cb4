// Package gctune sets a floor under the garbage collector's heap goal.
//
// With the default GOGC of 100 the collector runs whenever the heap has
// grown by its live size. A proxy's live heap is small (a few megabytes
// until it holds thousands of connections) while it allocates tens of
// megabytes a second under load, so it would collect several times a
// second, each cycle costing CPU and write barriers on the request path.
// Run raises GOGC while the live heap is small, so that the heap goal is
// at least MinHeap, and gives it back (100) once the live heap is large
// enough for the default to reach that floor by itself. Memory is then
// bounded by max(MinHeap, twice the live heap), as with the default when
// the heap is large.
//
// Contract: Percent is a pure function. Run blocks until its context
// ends, then restores the GOGC it found; it does nothing (and returns when
// the context ends) if the GOGC environment variable is set, which keeps
// the operator's choice. Run changes a process-wide setting: run one at a
// time.
package gctune
