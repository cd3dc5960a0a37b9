//! Boxes in a 3-D grid in memory order (`dims[0]` slowest, `dims[2]` fastest): cut one out,
//! put one back.

/// Per axis: the first index and the one past the last.
pub type Box3 = [(usize, usize); 3];

/// The box's voxels, in memory order.
pub fn crop<T: Copy>(data: &[T], dims: [usize; 3], b: Box3) -> Vec<T> {
    let mut out = Vec::with_capacity((0..3).map(|a| b[a].1 - b[a].0).product());
    for i in b[0].0..b[0].1 {
        for j in b[1].0..b[1].1 {
            let row = (i * dims[1] + j) * dims[2];
            out.extend_from_slice(&data[row + b[2].0..row + b[2].1]);
        }
    }
    out
}

/// Writes `values` (the box's voxels, in memory order) into the box of `into`.
pub fn paste<T: Copy>(into: &mut [T], dims: [usize; 3], b: Box3, values: &[T]) {
    let width = b[2].1 - b[2].0;
    let mut k = 0;
    for i in b[0].0..b[0].1 {
        for j in b[1].0..b[1].1 {
            let row = (i * dims[1] + j) * dims[2] + b[2].0;
            into[row..row + width].copy_from_slice(&values[k..k + width]);
            k += width;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cropped_box_pastes_back_where_it_came_from() {
        let dims = [3, 4, 5];
        let data: Vec<u32> = (0..60).collect();
        let b = [(1, 3), (1, 3), (2, 5)];
        let part = crop(&data, dims, b);
        assert_eq!(part, vec![27, 28, 29, 32, 33, 34, 47, 48, 49, 52, 53, 54]);
        let mut back = vec![0u32; 60];
        paste(&mut back, dims, b, &part);
        assert_eq!(crop(&back, dims, b), part);
        assert_eq!(back.iter().filter(|v| **v != 0).count(), 12);
    }
}
