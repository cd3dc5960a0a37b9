use std::borrow::Cow;

use lightbox_core::Volume;

use crate::halving;
use crate::packing::{self, Packing};
use crate::shaders::Texels;
use crate::{RenderError, SliceParams, shaders};

/// The optional GPU features the renderer uses where the adapter has them: 16-bit normalised
/// textures and filtered float32 textures, so that the texture unit can filter the volume for
/// the volume rendering's quick look at each sample (`shaders::Texels`). Devices opened for the
/// renderer (the viewer's too) should ask for these; without them it reads integer textures.
pub const VOLUME_FEATURES: wgpu::Features =
    wgpu::Features::TEXTURE_FORMAT_16BIT_NORM.union(wgpu::Features::FLOAT32_FILTERABLE);

/// Resource creation fails (out of memory, which the renderer answers by halving the volume)
/// once the GPU's memory is this full, by the budget its driver reports, rather than going on
/// until the device is lost. Instances opened for the renderer (the viewer's too) should set it.
pub const MEMORY_BUDGET: wgpu::MemoryBudgetThresholds =
    wgpu::MemoryBudgetThresholds { for_resource_creation: Some(90), for_device_loss: None };

/// A device and queue. The viewer passes egui's; headless callers (tests, CLI) open their own.
pub struct GpuContext {
    pub adapter_name: String,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
}

impl GpuContext {
    /// Opens a GPU without a window. Backends follow `WGPU_BACKEND` when set (e.g. `vulkan`),
    /// otherwise the primary native ones; Mesa's lavapipe counts as a Vulkan GPU.
    pub fn headless() -> Result<Self, RenderError> {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        desc.memory_budget_thresholds = MEMORY_BUDGET;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|_| RenderError::NoAdapter { backends: format!("{backends:?}") })?;
        let adapter_name = adapter.get_info().name;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lightbox-render headless"),
            // Timestamps, where the GPU has them, let benchmarks read GPU time (GpuTimer).
            // Filterable volume textures (VOLUME_FEATURES) where it has them.
            required_features: adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | VOLUME_FEATURES),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| RenderError::Device(e.to_string()))?;
        Ok(Self { adapter_name, device, queue })
    }

    /// Blocks until the GPU has finished everything submitted so far (for timing).
    pub fn wait_idle(&self) -> Result<(), RenderError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| RenderError::Device(e.to_string()))
    }
}

/// Measures the GPU time of one draw with timestamp queries, for benchmarks: what the GPU spent
/// on the pass, without the CPU's submission or the wait for the result.
pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

impl GpuTimer {
    /// `None` where the device was opened without [`wgpu::Features::TIMESTAMP_QUERY`].
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<Self> {
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Self {
            queries,
            resolved: buffer("timestamps", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer("timestamps readback", wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ),
            period_ns: f64::from(queue.get_timestamp_period()),
        })
    }

    fn writes(&self) -> wgpu::RenderPassTimestampWrites<'_> {
        wgpu::RenderPassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    fn compute_writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolved, 0);
        encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16);
    }

    /// Waits for the timed pass and returns its GPU time in milliseconds.
    fn read_ms(&self, device: &wgpu::Device) -> Result<f64, RenderError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        self.readback.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| RenderError::Readback(e.to_string()))?;
        receiver
            .recv()
            .map_err(|e| RenderError::Readback(e.to_string()))?
            .map_err(|e| RenderError::Readback(e.to_string()))?;
        let ticks = {
            let mapped = self.readback.get_mapped_range(..).map_err(|e| RenderError::Readback(e.to_string()))?;
            let stamps: &[u64] = bytemuck::cast_slice(&mapped);
            stamps[1].saturating_sub(stamps[0])
        };
        self.readback.unmap();
        Ok(ticks as f64 * self.period_ns / 1e6)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SliceUniforms {
    slice: u32,
    window_center: f32,
    window_width: f32,
    slope: f32,
    intercept: f32,
    _pad: [f32; 3],
}

/// Draws axial slices of one volume into its own RGBA8 texture (`columns × rows`).
///
/// The volume is uploaded once as a 3-D `r32float` texture; each [`render`](Self::render) only
/// updates a uniform and draws one triangle.
pub struct SliceRenderer {
    pipeline: wgpu::RenderPipeline,
    bind_group: wgpu::BindGroup,
    uniforms: wgpu::Buffer,
    target: wgpu::Texture,
    target_view: wgpu::TextureView,
    dims: [u32; 3],
    /// Stored value -> real value (identity for float volumes).
    rescale: [f32; 2],
    /// The volume on the CPU, where the GPU cannot hold it (its memory, or a length one texture
    /// cannot hold): each slice is drawn on the CPU and uploaded, at full resolution.
    cpu: Option<lightbox_core::StoredVolume>,
}

impl SliceRenderer {
    /// Format of the target texture (what egui's `register_native_texture` expects).
    pub const TARGET_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, volume: &Volume<f32>) -> Result<Self, RenderError> {
        let limits = GpuLimits::of(device);
        let bytes = volume.voxels().len() as u64 * 4;
        let on_gpu = if bytes > limits.volume_bytes {
            Err(RenderError::OverBudget { dims: volume.dims(), bytes, budget: limits.volume_bytes })
        } else {
            upload_volume(device, queue, volume, limits.texture_3d)
                .and_then(|uploaded| Self::build(device, queue, uploaded, [1.0, 0.0], limits.texture_3d))
        };
        Self::or_on_cpu(device, queue, on_gpu, || {
            lightbox_core::StoredVolume::new(
                volume.dims(),
                lightbox_core::StoredVoxels::F32(volume.voxels().to_vec()),
                volume.patient_from_voxel,
                1.0,
                0.0,
            )
            .map_err(|e| RenderError::Device(e.to_string()))
        })
    }

    /// The renderer `on_gpu`, or, where the GPU could not hold the volume, one that draws each
    /// slice of `volume()` on the CPU.
    fn or_on_cpu(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        on_gpu: Result<Self, RenderError>,
        volume: impl FnOnce() -> Result<lightbox_core::StoredVolume, RenderError>,
    ) -> Result<Self, RenderError> {
        match on_gpu {
            Err(
                why @ (RenderError::OutOfMemory { .. }
                | RenderError::OverBudget { .. }
                | RenderError::VolumeTooLarge { .. }),
            ) => {
                tracing::warn!("slices drawn on the CPU: {why}");
                // Let go of what the failed upload made before making the target.
                queue.submit(None);
                let _ = device.poll(wgpu::PollType::wait_indefinitely());
                let volume = volume()?;
                let tiny = lightbox_core::StoredVolume::new(
                    [1, 1, 1],
                    lightbox_core::StoredVoxels::U16(vec![0]),
                    volume.patient_from_voxel,
                    1.0,
                    0.0,
                )
                .map_err(|e| RenderError::Device(e.to_string()))?;
                let placeholder = upload_stored(device, queue, &tiny, 1, false)?;
                let mut renderer = Self::build(device, queue, placeholder, [1.0, 0.0], 1)?;
                let [nx, ny, nz] = volume.dims();
                let side = |n: usize| {
                    u32::try_from(n).map_err(|_| RenderError::VolumeTooLarge { dims: volume.dims(), limit: u32::MAX })
                };
                renderer.dims = [side(nx)?, side(ny)?, side(nz)?];
                (renderer.target, renderer.target_view) =
                    target_texture(device, renderer.dims[0], renderer.dims[1], "slice target");
                renderer.cpu = Some(volume);
                Ok(renderer)
            }
            other => other,
        }
    }

    /// Whether each slice is drawn on the CPU (the GPU could not hold the volume).
    pub fn draws_on_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// Like [`new`](Self::new) for a volume in its stored type: 8- and 16-bit voxels stay 1 or 2
    /// bytes on the GPU (no float32 copy); the shader applies the rescale.
    pub fn new_stored(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &lightbox_core::StoredVolume,
    ) -> Result<Self, RenderError> {
        Self::new_stored_within(device, queue, volume, GpuLimits::of(device))
    }

    /// [`new_stored`](Self::new_stored) within `limits`: a volume over them (or over the GPU's
    /// memory) is drawn slice by slice on the CPU, at full resolution.
    pub fn new_stored_within(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &lightbox_core::StoredVolume,
        limits: GpuLimits,
    ) -> Result<Self, RenderError> {
        let limits = GpuLimits { texture_3d: limits.texture_3d.min(texture_limit(device)), ..limits };
        let bytes = volume.voxels().len() as u64 * volume.voxels().bytes_per_voxel() as u64;
        let on_gpu = if bytes > limits.volume_bytes {
            Err(RenderError::OverBudget { dims: volume.dims(), bytes, budget: limits.volume_bytes })
        } else {
            // Integer textures: the slice shader reads voxels as they are, never filtered.
            upload_stored(device, queue, volume, limits.texture_3d, false).and_then(|uploaded| {
                let rescale = [volume.slope as f32, volume.intercept as f32];
                Self::build(device, queue, uploaded, rescale, limits.texture_3d)
            })
        };
        Self::or_on_cpu(device, queue, on_gpu, || Ok(volume.clone()))
    }

    fn build(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        Uploaded { view: volume, dims, packing, texels, .. }: Uploaded,
        rescale: [f32; 2],
        limit: u32,
    ) -> Result<Self, RenderError> {
        if packing.pieces > 1 {
            // The slice shader reads the texture directly; the MPR unpacks.
            return Err(RenderError::VolumeTooLarge { dims: dims.map(|d| d as usize), limit });
        }
        let (target, target_view) = target_texture(device, dims[0], dims[1], "slice target");
        let labels = upload_labels(device, queue, None, dims, packing)?;
        let scalars = upload_scalars(device, queue, None, dims, packing)?;
        let (_, occupancy) = occupancy_texture(device, [1, 1, 1]);
        let (pipeline, layout) =
            fullscreen_pipeline(device, &shaders::slice_for(texels.wgsl), "slice", sample_type(texels));
        let views = Views { volume, labels, scalars, occupancy };
        let (bind_group, uniforms, _) =
            bind_resources(device, &layout, "slice", &views, std::mem::size_of::<SliceUniforms>() as u64);
        Ok(Self { pipeline, bind_group, uniforms, target, target_view, dims, rescale, cpu: None })
    }

    /// `[columns, rows, slices]` of the uploaded volume.
    pub fn dims(&self) -> [u32; 3] {
        self.dims
    }

    /// The texture [`render`](Self::render) draws into.
    pub fn target_view(&self) -> &wgpu::TextureView {
        &self.target_view
    }

    /// Draws one slice into the target texture and submits the work.
    pub fn render(&self, device: &wgpu::Device, queue: &wgpu::Queue, params: SliceParams) -> Result<(), RenderError> {
        if params.slice >= self.dims[2] {
            return Err(RenderError::SliceOutOfRange { slice: params.slice, depth: self.dims[2] });
        }
        if let Some(volume) = &self.cpu {
            let rgba = crate::cpu::slice_rgba_stored(volume, params)?;
            write_target(queue, &self.target, &rgba, [self.dims[0], self.dims[1]]);
            return Ok(());
        }
        let uniforms = SliceUniforms {
            slice: params.slice,
            window_center: params.window.center,
            window_width: params.window.width,
            slope: self.rescale[0],
            intercept: self.rescale[1],
            _pad: [0.0; 3],
        };
        queue.write_buffer(&self.uniforms, 0, bytemuck::bytes_of(&uniforms));
        draw(device, queue, &self.pipeline, &self.bind_group, &self.target_view, None);
        Ok(())
    }

    /// Copies the target back to the CPU as tightly packed RGBA8 rows (for tests and snapshots).
    pub fn read_target(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<u8>, RenderError> {
        read_texture(device, queue, &self.target, self.dims[0], self.dims[1])
    }
}

const FLOAT: wgpu::TextureSampleType = wgpu::TextureSampleType::Float { filterable: false };

/// How the shaders read a volume texture holding `texels`.
fn sample_type(texels: Texels) -> wgpu::TextureSampleType {
    match texels.wgsl {
        "u32" => wgpu::TextureSampleType::Uint,
        "i32" => wgpu::TextureSampleType::Sint,
        _ => wgpu::TextureSampleType::Float { filterable: texels.filterable },
    }
}

/// The largest 3-D texture side to use: the device's, or less with `LIGHTBOX_MAX_TEXTURE_3D`
/// (for drivers that report more than they can hold).
fn texture_limit(device: &wgpu::Device) -> u32 {
    let device_limit = device.limits().max_texture_dimension_3d;
    std::env::var("LIGHTBOX_MAX_TEXTURE_3D")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(device_limit, |l| l.clamp(1, device_limit))
}

/// The volume's size and its layout in one texture under `limit`.
fn plan(dims: [usize; 3], limit: u32) -> Result<([u32; 3], Packing), RenderError> {
    let too_large = || RenderError::VolumeTooLarge { dims, limit };
    let sizes = dims.map(|d| u32::try_from(d).unwrap_or(u32::MAX));
    let packing = Packing::plan(sizes, limit).ok_or_else(too_large)?;
    Ok((sizes, packing))
}

/// A 3-D texture holding a volume of `dims` voxels (`bytes`, x fastest) laid out by `packing`.
#[allow(clippy::too_many_arguments)]
fn upload_packed(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    bytes: &[u8],
    bytes_per_voxel: u32,
    dims: [u32; 3],
    packing: Packing,
    format: wgpu::TextureFormat,
    label: &str,
) -> Result<wgpu::TextureView, RenderError> {
    let [tx, ty, tz] = packing.texture_dims(dims);
    // A GPU without the memory (or, with `MEMORY_BUDGET`, nearly without) reports it here, not
    // by the uncaptured-error handler (which panics): the renderer then tries the volume at half
    // resolution, or says so. Nothing is written into a texture that could not be made.
    let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d { width: tx, height: ty, depth_or_array_layers: tz },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D3,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    if let Some(error) = pollster::block_on(scope.pop()) {
        tracing::warn!("GPU out of memory for the {label}: {error}");
        let bytes = u64::from(tx) * u64::from(ty) * u64::from(tz) * u64::from(bytes_per_voxel);
        return Err(RenderError::OutOfMemory { what: label.to_owned(), bytes });
    }
    for (start, len, origin) in packing.pieces(dims) {
        let data = packing::piece_bytes(bytes, dims, bytes_per_voxel as usize, (packing.cut, start, len));
        let mut extent = dims;
        extent[packing.cut] = len;
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &texture,
                mip_level: 0,
                origin: wgpu::Origin3d { x: origin[0], y: origin[1], z: origin[2] },
                aspect: wgpu::TextureAspect::All,
            },
            &data,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(bytes_per_voxel * extent[0]),
                rows_per_image: Some(extent[1]),
            },
            wgpu::Extent3d { width: extent[0], height: extent[1], depth_or_array_layers: extent[2] },
        );
    }
    Ok(texture.create_view(&wgpu::TextureViewDescriptor::default()))
}

/// A volume as uploaded.
struct Uploaded {
    view: wgpu::TextureView,
    /// `[columns, rows, slices]`.
    dims: [u32; 3],
    packing: Packing,
    /// How the shaders read it.
    texels: Texels,
    /// A normalised texel reads as stored value / `scale` (1 for other textures).
    scale: f32,
}

/// Uploads a volume in its stored type (8/16-bit integers stay 1 or 2 bytes a voxel). With
/// `filterable`, 8/16-bit voxels go into normalised textures where the device has them (r8unorm;
/// r16unorm and r16snorm with `TEXTURE_FORMAT_16BIT_NORM`), which read back exactly and which
/// the texture unit can filter; signed volumes holding −32768 stay integer (r16snorm cannot
/// tell it from −32767).
fn upload_stored(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    volume: &lightbox_core::StoredVolume,
    limit: u32,
    filterable: bool,
) -> Result<Uploaded, RenderError> {
    use lightbox_core::StoredVoxels as V;
    use wgpu::TextureFormat as F;
    let (dims, packing) = plan(volume.dims(), limit)?;
    let norm16 = filterable && device.features().contains(wgpu::Features::TEXTURE_FORMAT_16BIT_NORM);
    let (format, bytes, texels, scale): (_, &[u8], _, _) = match volume.voxels() {
        V::U8(v) if filterable => (F::R8Unorm, v.as_slice(), Texels::NORMALISED, 255.0),
        V::U8(v) => (F::R8Uint, v.as_slice(), Texels::UINT, 1.0),
        V::U16(v) if norm16 => (F::R16Unorm, bytemuck::cast_slice(v), Texels::NORMALISED, 65535.0),
        V::U16(v) => (F::R16Uint, bytemuck::cast_slice(v), Texels::UINT, 1.0),
        V::I16(v) if norm16 && !v.contains(&i16::MIN) => {
            (F::R16Snorm, bytemuck::cast_slice(v), Texels::NORMALISED, 32767.0)
        }
        V::I16(v) => (F::R16Sint, bytemuck::cast_slice(v), Texels::SINT, 1.0),
        V::F32(v) => (F::R32Float, bytemuck::cast_slice(v), float_texels(device, filterable), 1.0),
    };
    let per_voxel = volume.voxels().bytes_per_voxel() as u32;
    let view = upload_packed(device, queue, bytes, per_voxel, dims, packing, format, "volume")?;
    Ok(Uploaded { view, dims, packing, texels, scale })
}

/// An r32float volume texture: filtered where wanted and the device filters float32.
fn float_texels(device: &wgpu::Device, filterable: bool) -> Texels {
    if filterable && device.features().contains(wgpu::Features::FLOAT32_FILTERABLE) {
        Texels::FLOAT_FILTERED
    } else {
        Texels::FLOAT
    }
}

/// Uploads a volume as a 3-D `r32float` texture (filterable where the device filters float32).
fn upload_volume(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    volume: &Volume<f32>,
    limit: u32,
) -> Result<Uploaded, RenderError> {
    let (dims, packing) = plan(volume.dims(), limit)?;
    let bytes = bytemuck::cast_slice(volume.voxels());
    let view = upload_packed(device, queue, bytes, 4, dims, packing, wgpu::TextureFormat::R32Float, "volume")?;
    Ok(Uploaded { view, dims, packing, texels: float_texels(device, true), scale: 1.0 })
}

/// Uploads a label map (segment numbers) as a 3-D `r8uint` texture on the volume's grid and
/// layout; without one, a single zero voxel (the binding must exist).
fn upload_labels(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    labels: Option<&Volume<u8>>,
    dims: [u32; 3],
    packing: Packing,
) -> Result<wgpu::TextureView, RenderError> {
    let format = wgpu::TextureFormat::R8Uint;
    match labels {
        Some(l) if l.dims() != dims.map(|d| d as usize) => {
            Err(RenderError::Device(format!("a {:?} label map on a {dims:?} volume", l.dims())))
        }
        Some(l) => upload_packed(device, queue, l.voxels(), 1, dims, packing, format, "labels"),
        None => upload_packed(
            device,
            queue,
            &[0],
            1,
            [1, 1, 1],
            Packing::plan([1, 1, 1], 1).unwrap_or(packing),
            format,
            "labels",
        ),
    }
}

/// Uploads a scalar map (e.g. probabilities) as a 3-D `r32float` texture on the volume's grid
/// and layout; without one, a single voxel.
fn upload_scalars(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    scalars: Option<&Volume<f32>>,
    dims: [u32; 3],
    packing: Packing,
) -> Result<wgpu::TextureView, RenderError> {
    let format = wgpu::TextureFormat::R32Float;
    match scalars {
        Some(v) if v.dims() != dims.map(|d| d as usize) => {
            Err(RenderError::Device(format!("a {:?} scalar map on a {dims:?} volume", v.dims())))
        }
        Some(v) => upload_packed(device, queue, bytemuck::cast_slice(v.voxels()), 4, dims, packing, format, "scalars"),
        None => upload_packed(
            device,
            queue,
            &[0; 4],
            4,
            [1, 1, 1],
            Packing::plan([1, 1, 1], 1).unwrap_or(packing),
            format,
            "scalars",
        ),
    }
}

/// The brick-maximum texture (r32float); the shader ignores it until it is written.
fn occupancy_texture(device: &wgpu::Device, bricks: [u32; 3]) -> (wgpu::Texture, wgpu::TextureView) {
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("occupancy"),
        size: wgpu::Extent3d { width: bricks[0], height: bricks[1], depth_or_array_layers: bricks[2] },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D3,
        format: wgpu::TextureFormat::R32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
    (texture, view)
}

/// An RGBA8 render target that egui can show and tests can read back.
fn target_texture(device: &wgpu::Device, width: u32, height: u32, label: &str) -> (wgpu::Texture, wgpu::TextureView) {
    // The compute pass writes the target as a storage texture, where the device has them.
    let storage = if Launch::compute_available(device) {
        wgpu::TextureUsages::STORAGE_BINDING
    } else {
        wgpu::TextureUsages::empty()
    };
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: SliceRenderer::TARGET_FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT
            | wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::COPY_SRC
            | wgpu::TextureUsages::COPY_DST
            | storage,
        view_formats: &[],
    });
    let view = target.create_view(&wgpu::TextureViewDescriptor::default());
    (target, view)
}

/// A pipeline that draws one full-target triangle with `shader`, reading the volume (binding 0)
/// and a uniform buffer of `uniform_size` bytes (binding 1).
fn fullscreen_pipeline(
    device: &wgpu::Device,
    shader: &str,
    label: &str,
    volume_sample: wgpu::TextureSampleType,
) -> (wgpu::RenderPipeline, wgpu::BindGroupLayout) {
    let layout = bind_layout(device, label, volume_sample);
    let pipeline = pipeline_for(device, shader, label, &layout);
    (pipeline, layout)
}

/// The bind group layout every pass shares: the volume (binding 0, `volume_sample`), uniforms,
/// labels, scalars, the colour table, the brick maxima and a trilinear sampler (binding 6, for
/// the volume rendering's quick look where the volume's texture can be filtered).
fn bind_layout(device: &wgpu::Device, label: &str, volume_sample: wgpu::TextureSampleType) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &[
            texture_entry(0, volume_sample),
            uniform_entry(1),
            texture_entry(2, wgpu::TextureSampleType::Uint),
            texture_entry(3, FLOAT),
            uniform_entry(4),
            texture_entry(5, FLOAT),
            wgpu::BindGroupLayoutEntry {
                binding: 6,
                visibility: wgpu::ShaderStages::FRAGMENT.union(wgpu::ShaderStages::COMPUTE),
                ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                count: None,
            },
        ],
    })
}

/// The full-target triangle's pipeline for `shader` over `layout`.
fn pipeline_for(
    device: &wgpu::Device,
    shader: &str,
    label: &str,
    layout: &wgpu::BindGroupLayout,
) -> wgpu::RenderPipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(shader)),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs_main"),
            compilation_options: Default::default(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: None,
        multisample: wgpu::MultisampleState::default(),
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs_main"),
            compilation_options: Default::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: SliceRenderer::TARGET_FORMAT,
                blend: None,
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        multiview_mask: None,
        cache: None,
    })
}

/// A 3-D texture read by the shaders (fragment stage or compute pass).
fn texture_entry(binding: u32, sample_type: wgpu::TextureSampleType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT.union(wgpu::ShaderStages::COMPUTE),
        ty: wgpu::BindingType::Texture {
            sample_type,
            view_dimension: wgpu::TextureViewDimension::D3,
            multisampled: false,
        },
        count: None,
    }
}

/// A uniform buffer read by the shaders (fragment stage or compute pass).
fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT.union(wgpu::ShaderStages::COMPUTE),
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The textures a renderer reads: volume, labels, scalars, brick maxima.
#[derive(Clone)]
struct Views {
    volume: wgpu::TextureView,
    labels: wgpu::TextureView,
    scalars: wgpu::TextureView,
    occupancy: wgpu::TextureView,
}

/// A renderer's own uniforms and colour table, bound with the (possibly shared) textures.
fn bind_resources(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    label: &str,
    views: &Views,
    uniform_size: u64,
) -> (wgpu::BindGroup, wgpu::Buffer, wgpu::Buffer) {
    let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: uniform_size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let lut = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("colour table"),
        size: (crate::lut::ENTRIES * 16) as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let trilinear = device.create_sampler(&wgpu::SamplerDescriptor {
        label: Some("trilinear"),
        mag_filter: wgpu::FilterMode::Linear,
        min_filter: wgpu::FilterMode::Linear,
        ..Default::default()
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::TextureView(&views.volume) },
            wgpu::BindGroupEntry { binding: 1, resource: uniforms.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: wgpu::BindingResource::TextureView(&views.labels) },
            wgpu::BindGroupEntry { binding: 3, resource: wgpu::BindingResource::TextureView(&views.scalars) },
            wgpu::BindGroupEntry { binding: 4, resource: lut.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 5, resource: wgpu::BindingResource::TextureView(&views.occupancy) },
            wgpu::BindGroupEntry { binding: 6, resource: wgpu::BindingResource::Sampler(&trilinear) },
        ],
    });
    (bind_group, uniforms, lut)
}

/// Draws the full-target triangle and submits; with a timer, the pass is timed.
fn draw(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    pipeline: &wgpu::RenderPipeline,
    bind_group: &wgpu::BindGroup,
    target: &wgpu::TextureView,
    timer: Option<&GpuTimer>,
) {
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("draw") });
    {
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("draw"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations { load: wgpu::LoadOp::Clear(wgpu::Color::BLACK), store: wgpu::StoreOp::Store },
            })],
            timestamp_writes: timer.map(GpuTimer::writes),
            ..Default::default()
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.draw(0..3, 0..1);
    }
    if let Some(timer) = timer {
        timer.resolve(&mut encoder);
    }
    queue.submit(Some(encoder.finish()));
}

/// Writes RGBA8 pixels drawn on the CPU (tightly packed rows of `width`) into a target.
fn write_target(queue: &wgpu::Queue, target: &wgpu::Texture, rgba: &[u8], [width, height]: [u32; 2]) {
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: target,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        rgba,
        wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(4 * width), rows_per_image: None },
        wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
    );
}

/// Copies an RGBA8 texture back to the CPU as tightly packed rows.
fn read_texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, RenderError> {
    let row_bytes = 4 * width;
    let padded_row = row_bytes.div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: u64::from(padded_row) * u64::from(height),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(padded_row),
                rows_per_image: Some(height),
            },
        },
        wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
    );
    queue.submit(Some(encoder.finish()));
    let (sender, receiver) = std::sync::mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = sender.send(result);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| RenderError::Readback(e.to_string()))?;
    receiver
        .recv()
        .map_err(|e| RenderError::Readback(e.to_string()))?
        .map_err(|e| RenderError::Readback(e.to_string()))?;
    let mapped = buffer.get_mapped_range(..).map_err(|e| RenderError::Readback(e.to_string()))?;
    let mut pixels = Vec::with_capacity((row_bytes * height) as usize);
    for row in mapped.chunks(padded_row as usize) {
        pixels.extend_from_slice(&row[..row_bytes as usize]);
    }
    Ok(pixels)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MprUniforms {
    origin: [f32; 4],
    step_x: [f32; 4],
    step_y: [f32; 4],
    step_z: [f32; 4],
    dims: [u32; 4],
    slab: [u32; 4],
    window: [f32; 4],
    overlay: [f32; 4],
    rescale: [f32; 4],
    scalar: [f32; 4],
    packing: [u32; 4],
}

/// How a renderer's pixels are launched on the GPU: the same shader code and the same pixels
/// either way (golden tests compare both with the CPU reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// One triangle over the target, a fragment a pixel: fastest on software rasterisers
    /// (Mesa's lavapipe).
    Fragment,
    /// A compute pass, one invocation a pixel in 8 × 8 tiles (`shaders/compute.wgsl`). A
    /// data-centre GPU runs fragments on a few of its multiprocessors only (an H100 has graphics
    /// units in 2 of its 66 texture-processing clusters) and compute on all; desktop GPUs run
    /// both alike.
    Compute,
}

impl Launch {
    /// What the renderer uses on `device` unless told otherwise: the fragment stage on a
    /// software rasteriser or a device without compute shaders and storage textures (OpenGL
    /// ES / WebGL2-class), compute on every other GPU.
    pub fn for_device(device: &wgpu::Device) -> Self {
        if MprRenderer::is_software(device) || !Self::compute_available(device) {
            Self::Fragment
        } else {
            Self::Compute
        }
    }

    /// Whether `device` can run the compute pass: compute shaders in 8 × 8 workgroups writing a
    /// storage texture.
    pub fn compute_available(device: &wgpu::Device) -> bool {
        let l = device.limits();
        l.max_storage_textures_per_shader_stage >= 1
            && l.max_compute_invocations_per_workgroup >= 64
            && l.max_compute_workgroup_size_x >= 8
            && l.max_compute_workgroup_size_y >= 8
            && l.max_compute_workgroups_per_dimension >= 1
    }
}

/// A compute pipeline drawing into an RGBA8 target (group 1), reading `layout`'s resources
/// (group 0); the layout of its output binding is `output`.
fn compute_pipeline_for(
    device: &wgpu::Device,
    shader: &str,
    label: &str,
    (layout, output): (&wgpu::BindGroupLayout, &wgpu::BindGroupLayout),
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(shader)),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(layout), Some(output)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("cs_main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// The layout of a compute pass's output: the RGBA8 target as a write-only storage texture.
fn compute_output_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("mpr compute output"),
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::StorageTexture {
                access: wgpu::StorageTextureAccess::WriteOnly,
                format: SliceRenderer::TARGET_FORMAT,
                view_dimension: wgpu::TextureViewDimension::D2,
            },
            count: None,
        }],
    })
}

/// The compute passes' pipelines (`shaders::planes_compute_for`, `volume_compute_for`), each made
/// on first use, and the layout of their output; shared by renderers made with `sharing`.
#[derive(Default)]
struct ComputePipelines {
    output: std::sync::OnceLock<wgpu::BindGroupLayout>,
    planes: std::sync::OnceLock<wgpu::ComputePipeline>,
    volume: std::sync::OnceLock<wgpu::ComputePipeline>,
}

/// Multiplanar reformation of one volume: planes of any orientation (and thick-slab MIP, MinIP
/// or average) drawn into an RGBA8 texture of a fixed size.
pub struct MprRenderer {
    pipeline: wgpu::RenderPipeline,
    /// The volume rendering's own pipeline (`shaders::volume_for`), made on first use and shared
    /// by renderers made with `sharing`.
    volume_pipeline: std::sync::Arc<std::sync::OnceLock<wgpu::RenderPipeline>>,
    volume_shader: std::sync::Arc<String>,
    /// The same planes and volume rendering as compute passes.
    compute: std::sync::Arc<ComputePipelines>,
    planes_compute_shader: std::sync::Arc<String>,
    volume_compute_shader: std::sync::Arc<String>,
    /// This renderer's target as the compute passes' output, made on first use.
    compute_output: std::sync::OnceLock<wgpu::BindGroup>,
    launch: Launch,
    /// The device can run the compute pass (its target then carries `STORAGE_BINDING`).
    compute_available: bool,
    layout: wgpu::BindGroupLayout,
    /// The uploaded volume and overlays, shared by renderers made with `sharing`.
    views: Views,
    bind_group: wgpu::BindGroup,
    uniforms: wgpu::Buffer,
    target: wgpu::Texture,
    target_view: wgpu::TextureView,
    dims: [u32; 3],
    size: [u32; 2],
    patient_from_voxel: lightbox_core::Affine3,
    has_labels: bool,
    /// Stored value -> real value (identity for float volumes).
    rescale: [f32; 2],
    /// How the volume's texture holds it, and the stored value of a normalised texel at 1.
    texels: Texels,
    texel_scale: f32,
    /// The volume rendering takes a quick look at each sample through the filter.
    quick: bool,
    /// Bytes the volume takes on the GPU.
    pub volume_bytes: u64,
    has_scalars: bool,
    /// How the scalar map is drawn; `None` hides it.
    pub scalar_style: Option<crate::ScalarStyle>,
    /// How the volume lies in its texture (folded when longer than the texture limit).
    pub packing: Packing,
    lut_buffer: wgpu::Buffer,
    lut_on: bool,
    /// The largest value per brick of 16³ voxels, for empty-space skipping in volume rendering.
    occupancy: wgpu::Texture,
    skipping: bool,
    /// The volume and overlays on the CPU, when the planes are drawn there
    /// (`draw_on_cpu`); shared by renderers made with `sharing`.
    cpu: Option<std::sync::Arc<CpuPlanes>>,
    /// The colour table the CPU path draws through (the GPU's is in `lut_buffer`).
    lut_cpu: Option<crate::Lut>,
    /// 1, or 2 or 4 where the GPU holds the volume halved (`halving`) once or twice.
    resolution: u32,
}

/// A volume and its overlays at half resolution (`halving`).
type Halved = (lightbox_core::StoredVolume, Option<Volume<u8>>, Option<Volume<f32>>);

/// The most a volume is halved to fit the GPU: to a quarter of its resolution along each axis.
const MOST_HALVED: u32 = 4;

impl PlaneSource<'_> {
    fn dims(&self) -> [usize; 3] {
        match self {
            Self::Stored(v) => v.dims(),
            Self::Float(v) => v.dims(),
        }
    }

    /// Bytes a voxel takes on the GPU.
    fn bytes_per_voxel(&self) -> u64 {
        match self {
            Self::Stored(v) => v.voxels().bytes_per_voxel() as u64,
            Self::Float(_) => 4,
        }
    }
}

/// What the renderer may use of a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLimits {
    /// The longest side of a 3-D texture: the device's `max_texture_dimension_3d`, or less with
    /// `LIGHTBOX_MAX_TEXTURE_3D` (for drivers that report more than they hold). A longer volume
    /// is folded into one texture (`packing`).
    pub texture_3d: u32,
    /// The most bytes a volume and its overlays may take on the GPU: no limit but the GPU's own
    /// memory, unless `LIGHTBOX_GPU_VOLUME_MB` sets one (a GPU shared with other work). A volume
    /// over it, or one the GPU has no memory for, is drawn at half or a quarter of its
    /// resolution ([`MprRenderer::resolution`]).
    pub volume_bytes: u64,
}

impl GpuLimits {
    /// The limits for `device`, with the environment's overrides.
    pub fn of(device: &wgpu::Device) -> Self {
        let volume_bytes = match std::env::var("LIGHTBOX_GPU_VOLUME_MB") {
            Ok(mb) => match mb.trim().parse::<u64>() {
                Ok(mb) => mb.saturating_mul(1_000_000),
                Err(_) => {
                    tracing::warn!("LIGHTBOX_GPU_VOLUME_MB={mb:?} is not a number of megabytes: ignored");
                    u64::MAX
                }
            },
            Err(_) => u64::MAX,
        };
        Self { texture_3d: texture_limit(device), volume_bytes }
    }
}

/// A volume for the CPU path: in its stored type, or float.
#[derive(Clone, Copy)]
pub enum PlaneSource<'a> {
    Stored(&'a lightbox_core::StoredVolume),
    Float(&'a Volume<f32>),
}

/// What the CPU path draws the planes from.
struct CpuPlanes {
    volume: lightbox_core::StoredVolume,
    labels: Option<Volume<u8>>,
    scalars: Option<Volume<f32>>,
}

impl MprRenderer {
    /// Uploads the volume (and a label map on its grid, to draw over it); planes drawn later
    /// must be `width × height` pixels.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &Volume<f32>,
        labels: Option<&Volume<u8>>,
        width: u32,
        height: u32,
    ) -> Result<Self, RenderError> {
        Self::float(device, queue, volume, (labels, None), (width, height))
    }

    /// Like [`new`](Self::new) with a scalar map on the volume's grid (a probability or
    /// difference map) drawn over the image with the "hot" colour map when `scalar_style` is set.
    pub fn with_scalars(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &Volume<f32>,
        scalars: &Volume<f32>,
        width: u32,
        height: u32,
    ) -> Result<Self, RenderError> {
        Self::float(device, queue, volume, (None, Some(scalars)), (width, height))
    }

    /// A float32 volume: uploaded as is, no rescale.
    fn float(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &Volume<f32>,
        overlays: (Option<&Volume<u8>>, Option<&Volume<f32>>),
        size: (u32, u32),
    ) -> Result<Self, RenderError> {
        Self::fitted(device, queue, PlaneSource::Float(volume), overlays, size, GpuLimits::of(device))
    }

    /// Like [`new`](Self::new) for a volume in its stored type: 8- and 16-bit voxels stay 1 or
    /// 2 bytes on the GPU (no float32 copy), the rescale is applied in the shader.
    pub fn new_stored(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &lightbox_core::StoredVolume,
        labels: Option<&Volume<u8>>,
        width: u32,
        height: u32,
    ) -> Result<Self, RenderError> {
        Self::new_stored_within(device, queue, volume, labels, (width, height), GpuLimits::of(device))
    }

    /// [`new_stored`](Self::new_stored) within `limits` (tests use them to fold or halve small
    /// volumes; the device's own limits still apply).
    pub fn new_stored_within(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: &lightbox_core::StoredVolume,
        labels: Option<&Volume<u8>>,
        size: (u32, u32),
        limits: GpuLimits,
    ) -> Result<Self, RenderError> {
        let limits = GpuLimits { texture_3d: limits.texture_3d.min(texture_limit(device)), ..limits };
        Self::fitted(device, queue, PlaneSource::Stored(volume), (labels, None), size, limits)
    }

    /// Uploads the volume and its overlays at full resolution where they fit `limits` and the
    /// GPU's memory, else at half (then a quarter of) it: a volume too large for the GPU is still
    /// drawn, coarser, and says so ([`resolution`](Self::resolution)).
    fn fitted(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: PlaneSource<'_>,
        (labels, scalars): (Option<&Volume<u8>>, Option<&Volume<f32>>),
        size: (u32, u32),
        limits: GpuLimits,
    ) -> Result<Self, RenderError> {
        let full_dims = volume.dims();
        let mut halved: Option<Halved> = None;
        let mut resolution = 1;
        loop {
            let (source, labels, scalars) = match &halved {
                Some((v, l, s)) => (PlaneSource::Stored(v), l.as_ref(), s.as_ref()),
                None => (volume, labels, scalars),
            };
            let voxels = source.dims().iter().product::<usize>() as u64;
            let bytes =
                voxels * source.bytes_per_voxel() + labels.map_or(0, |_| voxels) + scalars.map_or(0, |_| 4 * voxels);
            let why = if bytes > limits.volume_bytes {
                if resolution >= MOST_HALVED {
                    return Err(RenderError::OverBudget { dims: full_dims, bytes, budget: limits.volume_bytes });
                }
                format!("{:.1} MB is over the {:.1} MB allowed", bytes as f64 / 1e6, limits.volume_bytes as f64 / 1e6)
            } else {
                match Self::upload(device, queue, source, (labels, scalars), size, limits.texture_3d) {
                    Ok(mut renderer) => {
                        renderer.resolution = resolution;
                        return Ok(renderer);
                    }
                    Err(e @ RenderError::OutOfMemory { .. }) if resolution < MOST_HALVED => {
                        // Let go of what was made and written so far before the next try.
                        queue.submit(None);
                        let _ = device.poll(wgpu::PollType::wait_indefinitely());
                        e.to_string()
                    }
                    // Longer than one fold of the texture limit holds.
                    Err(e @ RenderError::VolumeTooLarge { .. }) if resolution < MOST_HALVED => e.to_string(),
                    Err(e) => return Err(e),
                }
            };
            resolution *= 2;
            tracing::warn!("volume {full_dims:?} drawn at 1/{resolution} of its resolution: {why}");
            halved = Some((
                halving::halve_source(source)?,
                labels.map(halving::halve_labels).transpose()?,
                scalars.map(halving::halve_scalars).transpose()?,
            ));
        }
    }

    /// Uploads the volume and overlays as they are.
    fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        volume: PlaneSource<'_>,
        overlays: (Option<&Volume<u8>>, Option<&Volume<f32>>),
        size: (u32, u32),
        limit: u32,
    ) -> Result<Self, RenderError> {
        let voxels = volume.dims().iter().product::<usize>() as u64;
        match volume {
            PlaneSource::Float(v) => {
                let uploaded = upload_volume(device, queue, v, limit)?;
                Self::build(device, queue, uploaded, overlays, size, v.patient_from_voxel, [1.0, 0.0], voxels * 4)
            }
            PlaneSource::Stored(v) => {
                let uploaded = upload_stored(device, queue, v, limit, true)?;
                let rescale = [v.slope as f32, v.intercept as f32];
                let bytes = voxels * volume.bytes_per_voxel();
                Self::build(device, queue, uploaded, overlays, size, v.patient_from_voxel, rescale, bytes)
            }
        }
    }

    /// 1 where the GPU holds the volume at full resolution; 2 or 4 where it holds it at half or
    /// a quarter of it along each axis (a volume over [`GpuLimits::volume_bytes`] or the GPU's
    /// memory).
    pub fn resolution(&self) -> u32 {
        self.resolution
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        Uploaded { view: volume_view, dims, packing, texels, scale }: Uploaded,
        (labels, scalars): (Option<&Volume<u8>>, Option<&Volume<f32>>),
        (width, height): (u32, u32),
        patient_from_voxel: lightbox_core::Affine3,
        rescale: [f32; 2],
        volume_bytes: u64,
    ) -> Result<Self, RenderError> {
        let labels_view = upload_labels(device, queue, labels, dims, packing)?;
        let scalars_view = upload_scalars(device, queue, scalars, dims, packing)?;
        let (target, target_view) = target_texture(device, width.max(1), height.max(1), "mpr target");
        let bricks = dims.map(|d| (d as usize).div_ceil(crate::occupancy::BRICK).max(1) as u32);
        let (occupancy, occupancy_view) = occupancy_texture(device, bricks);
        let folded = packing.pieces > 1;
        let (pipeline, layout) =
            fullscreen_pipeline(device, &shaders::planes_for(texels, folded), "mpr", sample_type(texels));
        let volume_shader = std::sync::Arc::new(shaders::volume_for(texels, folded));
        let planes_compute_shader = std::sync::Arc::new(shaders::planes_compute_for(texels, folded));
        let volume_compute_shader = std::sync::Arc::new(shaders::volume_compute_for(texels, folded));
        let views =
            Views { volume: volume_view, labels: labels_view, scalars: scalars_view, occupancy: occupancy_view };
        let (bind_group, uniforms, lut_buffer) =
            bind_resources(device, &layout, "mpr", &views, std::mem::size_of::<MprUniforms>() as u64);
        Ok(Self {
            pipeline,
            volume_pipeline: Default::default(),
            volume_shader,
            compute: Default::default(),
            planes_compute_shader,
            volume_compute_shader,
            compute_output: Default::default(),
            launch: Launch::for_device(device),
            compute_available: Launch::compute_available(device),
            layout,
            views,
            bind_group,
            uniforms,
            target,
            target_view,
            dims,
            size: [width.max(1), height.max(1)],
            patient_from_voxel,
            has_labels: labels.is_some(),
            rescale,
            texels,
            texel_scale: scale,
            quick: texels.filterable && !folded,
            volume_bytes,
            has_scalars: scalars.is_some(),
            scalar_style: None,
            packing,
            lut_buffer,
            lut_on: false,
            occupancy,
            skipping: false,
            cpu: None,
            lut_cpu: None,
            resolution: 1,
        })
    }

    pub fn target_view(&self) -> &wgpu::TextureView {
        &self.target_view
    }

    /// Another renderer of the same uploaded volume (and overlays) into its own `width × height`
    /// target: the panes of a layout share one copy of the volume on the GPU. Its colour table
    /// and empty-space skipping start off.
    pub fn sharing(&self, device: &wgpu::Device, width: u32, height: u32) -> Self {
        let (target, target_view) = target_texture(device, width.max(1), height.max(1), "mpr target");
        let (bind_group, uniforms, lut_buffer) =
            bind_resources(device, &self.layout, "mpr", &self.views, std::mem::size_of::<MprUniforms>() as u64);
        Self {
            pipeline: self.pipeline.clone(),
            volume_pipeline: self.volume_pipeline.clone(),
            volume_shader: self.volume_shader.clone(),
            compute: self.compute.clone(),
            planes_compute_shader: self.planes_compute_shader.clone(),
            volume_compute_shader: self.volume_compute_shader.clone(),
            compute_output: Default::default(),
            launch: self.launch,
            compute_available: self.compute_available,
            layout: self.layout.clone(),
            views: self.views.clone(),
            bind_group,
            uniforms,
            target,
            target_view,
            dims: self.dims,
            size: [width.max(1), height.max(1)],
            patient_from_voxel: self.patient_from_voxel,
            has_labels: self.has_labels,
            rescale: self.rescale,
            texels: self.texels,
            texel_scale: self.texel_scale,
            quick: self.quick,
            volume_bytes: self.volume_bytes,
            has_scalars: self.has_scalars,
            scalar_style: self.scalar_style,
            packing: self.packing,
            lut_buffer,
            lut_on: false,
            occupancy: self.occupancy.clone(),
            skipping: false,
            cpu: self.cpu.clone(),
            lut_cpu: None,
            resolution: self.resolution,
        }
    }

    /// How this renderer launches its pixels ([`Launch::for_device`] unless set).
    pub fn launch(&self) -> Launch {
        self.launch
    }

    /// Launches the pixels the other way from now on: the same pixels (for comparisons:
    /// bench-render times both, the golden tests check both). A device without compute
    /// ([`Launch::compute_available`]) stays with the fragment stage.
    pub fn set_launch(&mut self, launch: Launch) {
        self.launch = if self.compute_available { launch } else { Launch::Fragment };
    }

    /// Whether the volume rendering skips empty space (after
    /// [`skip_empty_space`](Self::skip_empty_space) on this renderer's volume).
    pub fn skips_empty_space(&self) -> bool {
        self.skipping
    }

    /// Whether the volume rendering takes a quick look at each sample through the texture unit's
    /// trilinear filter (one fetch) before sampling it exactly (eight): where the volume's
    /// texture can be filtered and is not folded.
    pub fn quick_look(&self) -> bool {
        self.quick
    }

    /// Turns the volume rendering's quick look off (every sample read exactly with eight
    /// fetches), or on again where the texture allows it; for comparisons (bench-render, tests).
    /// The image hardly changes: only samples clearly below the transfer function are skipped.
    pub fn set_quick_look(&mut self, on: bool) {
        let texels = Texels { filterable: on && self.texels.filterable, ..self.texels };
        let folded = self.packing.pieces > 1;
        self.quick = texels.filterable && !folded;
        self.volume_shader = std::sync::Arc::new(shaders::volume_for(texels, folded));
        self.volume_compute_shader = std::sync::Arc::new(shaders::volume_compute_for(texels, folded));
        self.volume_pipeline = Default::default();
        // The planes' compute pipeline is kept; the volume rendering's is made again.
        let planes = self.compute.planes.get().cloned();
        self.compute = std::sync::Arc::new(ComputePipelines {
            output: self.compute.output.clone(),
            planes: planes.map(std::sync::OnceLock::from).unwrap_or_default(),
            volume: Default::default(),
        });
    }

    /// Whether `device` is a software rasteriser (Mesa's lavapipe: a workstation without a GPU).
    /// There, [`draw_on_cpu`](Self::draw_on_cpu) draws faster.
    pub fn is_software(device: &wgpu::Device) -> bool {
        device.adapter_info().device_type == wgpu::DeviceType::Cpu
    }

    /// Draws on the CPU from now on (planes, slabs and the volume rendering), into the same
    /// target: the same sampling as the shader (`cpu::mpr_rgba_stored`), rows in parallel, the
    /// result uploaded. On a software rasteriser this is faster than the shader for planes,
    /// whose every texel fetch goes through the rasteriser's generic texture path (4–13× for
    /// oblique planes on lavapipe with 2 cores); on a GPU it is slower. A volume rendering
    /// with empty-space skipping is the exception: the shader skips empty bricks and the CPU
    /// path does not, and the shader draws it about 2× faster there (see
    /// [`draw_on_gpu`](Self::draw_on_gpu)). `volume`, `labels` and `scalars` must be what this renderer was made with; a
    /// copy is kept (shared with renderers made by `sharing` afterwards).
    pub fn draw_on_cpu(
        &mut self,
        volume: PlaneSource<'_>,
        labels: Option<&Volume<u8>>,
        scalars: Option<&Volume<f32>>,
    ) -> Result<(), RenderError> {
        let volume = match volume {
            PlaneSource::Stored(v) => v.clone(),
            PlaneSource::Float(v) => lightbox_core::StoredVolume::new(
                v.dims(),
                lightbox_core::StoredVoxels::F32(v.voxels().to_vec()),
                v.patient_from_voxel,
                1.0,
                0.0,
            )
            .map_err(|e| RenderError::Device(e.to_string()))?,
        };
        let dims = volume.dims();
        if labels.is_some_and(|l| l.dims() != dims) || scalars.is_some_and(|s| s.dims() != dims) {
            return Err(RenderError::Device("the overlays are not on the volume's grid".into()));
        }
        self.cpu = Some(std::sync::Arc::new(CpuPlanes { volume, labels: labels.cloned(), scalars: scalars.cloned() }));
        Ok(())
    }

    /// Whether the planes are drawn on the CPU ([`draw_on_cpu`](Self::draw_on_cpu)), at the
    /// volume's full resolution whatever the GPU holds.
    pub fn draws_on_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    /// Draws with the shader again (after [`draw_on_cpu`](Self::draw_on_cpu), or in a pane made
    /// by `sharing` from a renderer that draws on the CPU).
    pub fn draw_on_gpu(&mut self) {
        self.cpu = None;
    }

    /// Draws `plane` with the CPU path into the target.
    fn draw_cpu_frame(
        &self,
        queue: &wgpu::Queue,
        cpu: &CpuPlanes,
        (plane, window, style): (&crate::MprPlane, lightbox_core::WindowLevel, Option<crate::LabelStyle>),
    ) -> Result<(), RenderError> {
        let labels = cpu.labels.as_ref().zip(style);
        let scalars = cpu.scalars.as_ref().zip(self.scalar_style);
        let lut = self.lut_cpu.as_ref().filter(|_| self.lut_on);
        let rgba = crate::cpu::mpr_rgba_stored(&cpu.volume, labels, scalars, plane, window, lut)?;
        write_target(queue, &self.target, &rgba, self.size);
        Ok(())
    }

    /// Draws through a colour table from now on (the planes' colours, the volume rendering's
    /// transfer function), or in grey and the default ramp again with `None`.
    pub fn set_lut(&mut self, queue: &wgpu::Queue, lut: Option<&crate::Lut>) {
        if let Some(lut) = lut {
            queue.write_buffer(&self.lut_buffer, 0, bytemuck::cast_slice(&lut.entries));
        }
        self.lut_on = lut.is_some();
        self.lut_cpu = lut.cloned();
    }

    /// Lets the volume rendering jump over bricks of 16³ voxels that hold nothing above the
    /// transfer function's lower edge (the same image, fewer samples). `volume` must be the
    /// one this renderer draws.
    pub fn skip_empty_space(&mut self, queue: &wgpu::Queue, volume: &Volume<f32>) {
        self.skip_empty_space_of(queue, PlaneSource::Float(volume));
    }

    /// [`skip_empty_space`](Self::skip_empty_space) for a volume in its stored type (the bricks
    /// hold real values, after the rescale).
    pub fn skip_empty_space_stored(&mut self, queue: &wgpu::Queue, volume: &lightbox_core::StoredVolume) {
        self.skip_empty_space_of(queue, PlaneSource::Stored(volume));
    }

    /// The bricks of the volume as the GPU holds it (halved as often as it was).
    fn skip_empty_space_of(&mut self, queue: &wgpu::Queue, volume: PlaneSource<'_>) {
        use lightbox_core::StoredVoxels as V;
        let mut halved = None;
        let mut resolution = 1;
        while resolution < self.resolution {
            let source = halved.as_ref().map_or(volume, PlaneSource::Stored);
            match halving::halve_source(source) {
                Ok(v) => halved = Some(v),
                Err(e) => {
                    tracing::error!("empty-space skipping: {e}");
                    return;
                }
            }
            resolution *= 2;
        }
        let volume = match halved.as_ref().map_or(volume, PlaneSource::Stored) {
            PlaneSource::Float(v) => {
                let voxels = v.voxels();
                self.write_occupancy(queue, v.dims(), |i| voxels[i]);
                return;
            }
            PlaneSource::Stored(v) => v,
        };
        let (slope, intercept) = (volume.slope as f32, volume.intercept as f32);
        let dims = volume.dims();
        match volume.voxels() {
            V::U8(v) => self.write_occupancy(queue, dims, |i| f32::from(v[i]) * slope + intercept),
            V::U16(v) => self.write_occupancy(queue, dims, |i| f32::from(v[i]) * slope + intercept),
            V::I16(v) => self.write_occupancy(queue, dims, |i| f32::from(v[i]) * slope + intercept),
            V::F32(v) => self.write_occupancy(queue, dims, |i| v[i] * slope + intercept),
        }
    }

    fn write_occupancy(&mut self, queue: &wgpu::Queue, dims: [usize; 3], value: impl Fn(usize) -> f32) {
        let (bricks, max) = crate::occupancy::brick_max(dims, value);
        let size = self.occupancy.size();
        if [size.width, size.height, size.depth_or_array_layers] != bricks.map(|b| b as u32) {
            tracing::error!("empty-space skipping: the volume is not the one this renderer draws");
            return;
        }
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &self.occupancy,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            bytemuck::cast_slice(&max),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(4 * size.width),
                rows_per_image: Some(size.height),
            },
            size,
        );
        self.skipping = true;
    }

    /// Draws `plane` (its size must be the renderer's) with `window`, and the label map in
    /// `style` when there is one and a style is given.
    pub fn render(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        plane: &crate::MprPlane,
        window: lightbox_core::WindowLevel,
        style: Option<crate::LabelStyle>,
    ) -> Result<(), RenderError> {
        self.draw_plane(device, queue, (plane, window, style), None)
    }

    /// [`render`](Self::render), waiting for the GPU: returns the draw's GPU time in ms.
    pub fn render_timed(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        plane: &crate::MprPlane,
        window: lightbox_core::WindowLevel,
        timer: &GpuTimer,
    ) -> Result<f64, RenderError> {
        self.draw_plane(device, queue, (plane, window, None), Some(timer))?;
        timer.read_ms(device)
    }

    fn draw_plane(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        (plane, window, style): (&crate::MprPlane, lightbox_core::WindowLevel, Option<crate::LabelStyle>),
        timer: Option<&GpuTimer>,
    ) -> Result<(), RenderError> {
        if [plane.width, plane.height] != self.size {
            return Err(RenderError::Device(format!(
                "a {}x{} plane on a {}x{} target",
                plane.width, plane.height, self.size[0], self.size[1]
            )));
        }
        // The CPU path, where it is on; timed draws measure the shader.
        if let Some(cpu) = self.cpu.as_deref().filter(|_| timer.is_none()) {
            return self.draw_cpu_frame(queue, cpu, (plane, window, style.filter(|_| self.has_labels)));
        }
        let v = plane
            .in_voxels(&self.patient_from_voxel)
            .ok_or(RenderError::Device("the volume's geometry cannot be inverted".into()))?;
        let four = |a: [f32; 3]| [a[0], a[1], a[2], 0.0];
        let uniforms = MprUniforms {
            origin: four(v.origin),
            step_x: four(v.step_x),
            step_y: four(v.step_y),
            step_z: four(v.step_z),
            dims: [self.dims[0], self.dims[1], self.dims[2], 0],
            slab: [v.samples, plane.mode.code(), plane.width, plane.height],
            window: [
                window.center,
                window.width,
                if self.lut_on { 1.0 } else { 0.0 },
                if self.skipping { 1.0 } else { 0.0 },
            ],
            overlay: match style.filter(|_| self.has_labels) {
                Some(s) => [s.opacity, if s.outline { 1.0 } else { 0.0 }, 1.0, 0.0],
                None => [0.0; 4],
            },
            rescale: [self.rescale[0], self.rescale[1], self.texel_scale, v.step_mm],
            scalar: match self.scalar_style.filter(|_| self.has_scalars) {
                Some(s) => [s.lower, s.upper, s.opacity, 1.0],
                None => [0.0; 4],
            },
            packing: self.packing.uniform(),
        };
        queue.write_buffer(&self.uniforms, 0, bytemuck::bytes_of(&uniforms));
        if self.launch == Launch::Compute {
            self.dispatch(device, queue, plane.mode == crate::SlabMode::Volume, timer);
            return Ok(());
        }
        let pipeline = if plane.mode == crate::SlabMode::Volume {
            self.volume_pipeline.get_or_init(|| pipeline_for(device, &self.volume_shader, "mpr volume", &self.layout))
        } else {
            &self.pipeline
        };
        draw(device, queue, pipeline, &self.bind_group, &self.target_view, timer);
        Ok(())
    }

    pub fn read_target(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<u8>, RenderError> {
        read_texture(device, queue, &self.target, self.size[0], self.size[1])
    }

    /// The plane (or the volume rendering, when `volume`) as a compute pass into the target.
    fn dispatch(&self, device: &wgpu::Device, queue: &wgpu::Queue, volume: bool, timer: Option<&GpuTimer>) {
        let output_layout = self.compute.output.get_or_init(|| compute_output_layout(device));
        let (lock, shader, label) = if volume {
            (&self.compute.volume, &self.volume_compute_shader, "mpr volume compute")
        } else {
            (&self.compute.planes, &self.planes_compute_shader, "mpr planes compute")
        };
        let pipeline = lock.get_or_init(|| compute_pipeline_for(device, shader, label, (&self.layout, output_layout)));
        let output = self.compute_output.get_or_init(|| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("mpr compute output"),
                layout: output_layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::TextureView(&self.target_view),
                }],
            })
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: timer.map(GpuTimer::compute_writes),
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            pass.set_bind_group(1, output, &[]);
            pass.dispatch_workgroups(self.size[0].div_ceil(8), self.size[1].div_ceil(8), 1);
        }
        if let Some(timer) = timer {
            timer.resolve(&mut encoder);
        }
        queue.submit(Some(encoder.finish()));
    }
}
