//! A bound on what parsing one file may allocate.
//!
//! dicom-rs reserves a value's declared length before reading it, so a 674-byte file that claims
//! a 3.7 GB element makes it allocate 3.7 GB (found by fuzzing, pydicom's `UN_sequence.dcm` does
//! it too). While a file is parsed, this allocator refuses any single allocation larger than a
//! budget proportional to the file's size; dicom-rs's fallible reservation then fails with an
//! error and the file is reported as invalid instead of exhausting memory.
//!
//! Binaries opt in with
//! `#[global_allocator] static ALLOC: lightbox_dicom::ParseGuardAllocator = lightbox_dicom::ParseGuardAllocator;`
//! Without it nothing is bounded (and nothing else changes).
#![allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; every method forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn limit() -> usize {
    LIMIT.try_with(Cell::get).unwrap_or(usize::MAX)
}

/// The system allocator, refusing single allocations above the current thread's parse budget.
pub struct ParseGuardAllocator;

// SAFETY: every method either returns null (a refused allocation, which the `GlobalAlloc`
// contract allows) or forwards unchanged to `System`.
unsafe impl GlobalAlloc for ParseGuardAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `parse` with single allocations on this thread bounded for a file of `file_bytes`:
/// 64 times its size (deflated data sets inflate) plus 16 MiB.
pub(crate) fn with_parse_budget<R>(file_bytes: u64, parse: impl FnOnce() -> R) -> R {
    let budget = usize::try_from(file_bytes.saturating_mul(64).saturating_add(16 << 20)).unwrap_or(usize::MAX);
    let previous = LIMIT.try_with(|l| l.replace(budget.min(l.get()))).unwrap_or(usize::MAX);
    let result = parse();
    let _ = LIMIT.try_with(|l| l.set(previous));
    result
}
