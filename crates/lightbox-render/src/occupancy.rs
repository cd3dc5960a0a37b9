//! Empty-space skipping for the volume rendering: the largest value in each brick of 8³ voxels
//! (and the voxels one past its far faces, which trilinear samples inside it also read). A ray
//! in a brick whose largest value is below the transfer function's lower edge would add
//! nothing there, so it jumps to the brick's far side: the same image, fewer samples.

/// Voxels along each side of a brick.
pub const BRICK: usize = 8;

/// The bricks' grid size and, per brick (x fastest), the largest of `value(voxel index)` over
/// the voxels a sample inside it can read; NaN voxels are ignored.
pub fn brick_max(dims: [usize; 3], value: impl Fn(usize) -> f32) -> ([usize; 3], Vec<f32>) {
    let [nx, ny, nz] = dims;
    let bricks = dims.map(|d| d.div_ceil(BRICK).max(1));
    let mut out = vec![f32::NEG_INFINITY; bricks.iter().product()];
    let span = |b: usize, n: usize| (b * BRICK)..((b + 1) * BRICK + 1).min(n);
    for bz in 0..bricks[2] {
        for by in 0..bricks[1] {
            for bx in 0..bricks[0] {
                let mut m = f32::NEG_INFINITY;
                for z in span(bz, nz) {
                    for y in span(by, ny) {
                        let row = nx * (y + ny * z);
                        for x in span(bx, nx) {
                            let v = value(row + x);
                            if v > m {
                                m = v;
                            }
                        }
                    }
                }
                out[bx + bricks[0] * (by + bricks[1] * bz)] = m;
            }
        }
    }
    (bricks, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brick_sees_its_voxels_and_the_ones_past_its_far_faces() {
        let dims = [17, 9, 8];
        let mut voxels = vec![0.0f32; 17 * 9 * 8];
        // Voxel x = 8 belongs to brick 1 and is read by samples at the end of brick 0.
        voxels[8 + 17 * (2 + 9 * 3)] = 5.0;
        // Voxel x = 16 is only in the last brick (and past brick 1's far face).
        voxels[16] = 7.0;
        let (bricks, max) = brick_max(dims, |i| voxels[i]);
        assert_eq!(bricks, [3, 2, 1]);
        assert_eq!(max[0], 5.0);
        assert_eq!(max[1], 7.0);
        assert_eq!(max[2], 7.0);
        assert_eq!(max[3], 0.0, "brick (0, 1) sees y 8..9 only");
    }
}
