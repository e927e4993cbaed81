//! Whole-step CUDA graphs: capture one training step (forward, loss, backward, optimizer) and
//! replay it with one launch. See `csrc/cuda_graph.cpp` for why; built only when the torch install
//! has CUDA (`cfg(cpw_cuda_graphs)`), otherwise [`CudaGraph::capture`] reports it is unavailable
//! and training runs eagerly.

/// A captured graph; replays on the current CUDA stream.
pub struct CudaGraph {
    #[cfg(cpw_cuda_graphs)]
    ptr: std::ptr::NonNull<std::ffi::c_void>,
}

#[cfg(cpw_cuda_graphs)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn cpw_graph_new() -> *mut c_void;
        pub fn cpw_graph_capture_begin(g: *mut c_void, device: c_int) -> *mut c_char;
        pub fn cpw_graph_capture_end(g: *mut c_void) -> *mut c_char;
        pub fn cpw_graph_replay(g: *mut c_void) -> *mut c_char;
        pub fn cpw_graph_free(g: *mut c_void);
        pub fn cpw_free_error(e: *mut c_char);
    }

    /// Turns a returned error string (or null) into a Result, freeing it.
    pub fn check(e: *mut c_char) -> Result<(), String> {
        if e.is_null() {
            return Ok(());
        }
        // SAFETY: non-null strings come from malloc+strcpy in cpw_*; freed exactly once here.
        let msg = unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned();
        unsafe { cpw_free_error(e) };
        Err(msg)
    }
}

impl CudaGraph {
    /// Whether this build can capture graphs at all.
    pub fn available() -> bool {
        cfg!(cpw_cuda_graphs)
    }

    /// Runs `work` under stream capture on CUDA device `device` and returns the graph. The work
    /// is recorded, not executed: replay once to perform it.
    #[cfg(cpw_cuda_graphs)]
    pub fn capture<R>(device: usize, work: impl FnOnce() -> R) -> Result<(CudaGraph, R), String> {
        // SAFETY: the shim returns a fresh heap object or null.
        let raw = unsafe { ffi::cpw_graph_new() };
        let ptr = std::ptr::NonNull::new(raw).ok_or("could not allocate a CUDA graph")?;
        let graph = CudaGraph { ptr };
        // SAFETY: ptr is a live Graph from cpw_graph_new.
        ffi::check(unsafe { ffi::cpw_graph_capture_begin(graph.ptr.as_ptr(), device as i32) })?;
        let out = work();
        ffi::check(unsafe { ffi::cpw_graph_capture_end(graph.ptr.as_ptr()) })?;
        Ok((graph, out))
    }

    #[cfg(not(cpw_cuda_graphs))]
    pub fn capture<R>(_device: usize, _work: impl FnOnce() -> R) -> Result<(CudaGraph, R), String> {
        Err("this build has no CUDA graph support (torch without CUDA)".into())
    }

    pub fn replay(&self) -> Result<(), String> {
        #[cfg(cpw_cuda_graphs)]
        {
            // SAFETY: ptr is a live, captured Graph.
            ffi::check(unsafe { ffi::cpw_graph_replay(self.ptr.as_ptr()) })
        }
        #[cfg(not(cpw_cuda_graphs))]
        {
            Err("no CUDA graph support".into())
        }
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(cpw_cuda_graphs)]
        // SAFETY: ptr came from cpw_graph_new and is freed once.
        unsafe {
            ffi::cpw_graph_free(self.ptr.as_ptr())
        }
    }
}

// The graph object is only touched from the training thread that created it.
unsafe impl Send for CudaGraph {}
