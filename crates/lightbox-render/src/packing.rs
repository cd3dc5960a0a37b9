//! Volumes longer than the GPU's 3-D texture limit along one axis (a 3000-slice CT on a GPU
//! whose limit is 2048; 256 on some integrated GPUs) still fit one texture: the long axis is cut
//! into pieces laid side by side along a shorter axis. The shaders read every voxel through the
//! same address map (`packed` in `mpr.wgsl`), so sampling, slabs, volume rendering and overlays
//! are unchanged and give the same pixels as an unpacked volume.

/// How a volume is laid out in its texture: axis `cut` in `pieces` of `piece` voxels, piece `p`
/// shifted by `p × stride` voxels along axis `along`. One piece: the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    pub cut: usize,
    pub along: usize,
    pub piece: u32,
    pub pieces: u32,
    /// The volume's size along `along` (the shift from one piece to the next).
    pub stride: u32,
}

impl Packing {
    /// The layout for `dims` under a texture limit of `limit` voxels per axis; `None` when no
    /// single fold fits (two axes too long, or too little room along the others).
    pub fn plan(dims: [u32; 3], limit: u32) -> Option<Self> {
        if dims.contains(&0) || limit == 0 {
            return None;
        }
        let long: Vec<usize> = (0..3).filter(|&a| dims[a] > limit).collect();
        match long.as_slice() {
            [] => Some(Self { cut: 2, along: 0, piece: dims[2], pieces: 1, stride: dims[0] }),
            &[cut] => {
                let pieces = dims[cut].div_ceil(limit);
                let piece = dims[cut].div_ceil(pieces);
                // The other axis with the most room for the pieces.
                let along = (0..3).filter(|&b| b != cut).min_by_key(|&b| dims[b])?;
                (u64::from(dims[along]) * u64::from(pieces) <= u64::from(limit)).then_some(Self {
                    cut,
                    along,
                    piece,
                    pieces,
                    stride: dims[along],
                })
            }
            _ => None,
        }
    }

    /// The texture's size.
    pub fn texture_dims(&self, dims: [u32; 3]) -> [u32; 3] {
        let mut t = dims;
        t[self.cut] = self.piece;
        t[self.along] = self.stride * self.pieces;
        t
    }

    /// Where voxel `c` of the volume lies in the texture (what `packed` in `mpr.wgsl` computes).
    pub fn texel(&self, c: [u32; 3]) -> [u32; 3] {
        let mut t = c;
        let p = c[self.cut] / self.piece;
        t[self.cut] -= p * self.piece;
        t[self.along] += p * self.stride;
        t
    }

    /// The shader's uniform: cut, along, piece, stride; cut = 3 when there is nothing to unpack.
    pub fn uniform(&self) -> [u32; 4] {
        if self.pieces <= 1 { [3, 0, 0, 0] } else { [self.cut as u32, self.along as u32, self.piece, self.stride] }
    }

    /// The pieces: (first voxel along `cut`, voxels in it, texel origin).
    pub fn pieces(&self, dims: [u32; 3]) -> impl Iterator<Item = (u32, u32, [u32; 3])> + '_ {
        (0..self.pieces).filter_map(move |p| {
            let start = p * self.piece;
            let len = self.piece.min(dims[self.cut].saturating_sub(start));
            let mut origin = [0; 3];
            origin[self.along] = p * self.stride;
            (len > 0).then_some((start, len, origin))
        })
    }
}

/// The voxels `start..start + len` along `cut` of a volume of `dims` (x fastest), each
/// `bytes_per_voxel` long, as one tightly packed block.
pub fn piece_bytes<'a>(
    bytes: &'a [u8],
    dims: [u32; 3],
    bytes_per_voxel: usize,
    (cut, start, len): (usize, u32, u32),
) -> std::borrow::Cow<'a, [u8]> {
    let [nx, ny, nz] = dims.map(|d| d as usize);
    let (start, len) = (start as usize, len as usize);
    let row = nx * bytes_per_voxel;
    match cut {
        // Slices are contiguous: no copy.
        2 => std::borrow::Cow::Borrowed(&bytes[start * ny * row..(start + len) * ny * row]),
        1 => {
            let mut out = Vec::with_capacity(len * row * nz);
            for k in 0..nz {
                let slice = k * ny * row;
                out.extend_from_slice(&bytes[slice + start * row..slice + (start + len) * row]);
            }
            std::borrow::Cow::Owned(out)
        }
        _ => {
            let mut out = Vec::with_capacity(len * bytes_per_voxel * ny * nz);
            for line in bytes.chunks_exact(row) {
                out.extend_from_slice(&line[start * bytes_per_voxel..(start + len) * bytes_per_voxel]);
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_without_packing_when_it_can() {
        let p = Packing::plan([512, 512, 300], 2048).unwrap_or_else(|| unreachable!());
        assert_eq!(p.pieces, 1);
        assert_eq!(p.texture_dims([512, 512, 300]), [512, 512, 300]);
        assert_eq!(p.uniform()[0], 3);
    }

    #[test]
    fn a_long_stack_folds_into_the_shortest_other_axis() {
        // 3000 slices of 512 × 400 under a 2048 limit: two pieces of 1500, side by side in y.
        let p = Packing::plan([512, 400, 3000], 2048).unwrap_or_else(|| unreachable!());
        assert_eq!((p.cut, p.along, p.piece, p.pieces), (2, 1, 1500, 2));
        assert_eq!(p.texture_dims([512, 400, 3000]), [512, 800, 1500]);
        assert_eq!(p.texel([10, 20, 1499]), [10, 20, 1499]);
        assert_eq!(p.texel([10, 20, 1500]), [10, 420, 0]);
        // Every voxel lands on its own texel inside the texture.
        let t = p.texture_dims([512, 400, 3000]);
        let mut seen = std::collections::HashSet::new();
        for z in (0..3000).step_by(7) {
            for y in (0..400).step_by(13) {
                let q = p.texel([511, y, z]);
                assert!(q.iter().zip(t).all(|(a, b)| *a < b));
                assert!(seen.insert(q));
            }
        }
        assert!(Packing::plan([3000, 3000, 10], 2048).is_none(), "two long axes");
        assert!(Packing::plan([2000, 2000, 5000], 2048).is_none(), "no room for three pieces");
    }

    #[test]
    fn pieces_cut_rows_columns_and_slices_alike() {
        // 4 × 3 × 2 voxels numbered in memory order, one byte each.
        let bytes: Vec<u8> = (0..24).collect();
        assert_eq!(&*piece_bytes(&bytes, [4, 3, 2], 1, (2, 1, 1)), &bytes[12..24]);
        assert_eq!(
            &*piece_bytes(&bytes, [4, 3, 2], 1, (1, 1, 2)),
            &[4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23]
        );
        assert_eq!(&*piece_bytes(&bytes, [4, 3, 2], 1, (0, 2, 2)), &[2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23]);
        let p = Packing { cut: 2, along: 0, piece: 2, pieces: 3, stride: 4 };
        let pieces: Vec<_> = p.pieces([4, 3, 5]).collect();
        assert_eq!(pieces, vec![(0, 2, [0, 0, 0]), (2, 2, [4, 0, 0]), (4, 1, [8, 0, 0])]);
    }
}
