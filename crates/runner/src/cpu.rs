//! Process settings for training on the CPU: subnormal flushing and the allocator.
//!
//! Late in training, gradients and Adam's moments drift into the subnormal range (below ~1e-38
//! in f32), where x86 arithmetic is tens of times slower: measured on LeNet-300-100 (flex, 2
//! threads), an epoch went from 1.6 s to 10 s between epochs 50 and 160. Flushing subnormals to
//! zero removes that cost and changes no result that matters (such values are 0 for training).

/// Set flush-to-zero and denormals-are-zero on the calling thread (x86-64 MXCSR bits 15 and 6).
pub fn flush_subnormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr only read and write the SSE control register through a valid
        // pointer to a local; setting FTZ/DAZ affects only floating-point rounding of subnormals.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
}

/// Everything this module sets, for the process that trains: [`flush_subnormals`] and
/// [`retain_freed_memory`].
pub fn prepare_for_training() {
    flush_subnormals();
    retain_freed_memory();
}

/// Flush subnormals on this thread and on every thread of rayon's global pool (which the CPU
/// backend computes on). The pool is built here if nothing has built it yet.
pub fn flush_subnormals() {
    flush_subnormals_on_this_thread();
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| flush_subnormals_on_this_thread())
        .build_global();
}

/// Keep freed memory in the process instead of handing it back to the kernel (glibc only).
///
/// Every tensor operation allocates its output. A LeNet-5 step's tensors are 0.1–5 MB, above
/// glibc's mmap threshold, so each was mapped, faulted in page by page and unmapped again: 9 % of
/// a step went to page faults. Allocations up to 32 MiB (glibc's ceiling for this setting) now
/// come from the heap, and the heap is never trimmed. Measured (2 threads): LeNet-5 Sparse VD
/// step 139 → 129 ms.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called before the
    // training allocates and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnormals_become_zero() {
        std::thread::spawn(|| {
            flush_subnormals_on_this_thread();
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            assert_eq!(std::hint::black_box(tiny / 4.0), 0.0);
        })
        .join()
        .unwrap();
    }
}
