//! Fashion-MNIST as arrays: the four IDX files, checked against each other, and a
//! reproducible validation split carved from the training set (the test set is kept for the
//! final evaluation only).

use std::path::{Path, PathBuf};

use crate::TrainError;
use crate::idx::Idx;

/// Default location: Debian's `dataset-fashion-mnist` package.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// One file of the data set. The checksum is of the *decompressed* IDX bytes, so it holds
/// for the official mirror's files and for re-compressed copies (Debian's) alike.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec {
    pub name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

pub const FILES: [FileSpec; 4] = [
    FileSpec {
        name: "train-images-idx3-ubyte",
        sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        bytes: 47_040_016,
    },
    FileSpec {
        name: "train-labels-idx1-ubyte",
        sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        bytes: 60_008,
    },
    FileSpec {
        name: "t10k-images-idx3-ubyte",
        sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        bytes: 7_840_016,
    },
    FileSpec {
        name: "t10k-labels-idx1-ubyte",
        sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        bytes: 10_008,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

/// Images (row-major `u8`, `rows × cols` each) and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.pixels();
        &self.images[i * n..(i + 1) * n]
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.pixels());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Split {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// The first `n` examples (for short runs: CI, smoke tests).
    pub fn take(&self, n: usize) -> Split {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&idx)
    }
}

/// `dir/name.gz`, else `dir/name`.
pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(format!("{name}.gz")), dir.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

pub fn load(dir: &Path, part: Part) -> Result<Split, TrainError> {
    let (img, lab) = match part {
        Part::Train => (&FILES[0], &FILES[1]),
        Part::Test => (&FILES[2], &FILES[3]),
    };
    let open = |spec: &FileSpec| -> Result<Idx, TrainError> {
        let path = find(dir, spec.name).ok_or_else(|| {
            TrainError::Data(format!(
                "{}(.gz) is not in {}: install the Debian package dataset-fashion-mnist, \
                 give --data-dir, or fetch it with `infera data download`",
                spec.name,
                dir.display()
            ))
        })?;
        Idx::read(&path)
    };
    let images = open(img)?;
    let labels = open(lab)?;
    if images.dims.len() != 3 {
        return Err(TrainError::Data(format!(
            "{}: expected [N, rows, cols], found {:?}",
            img.name, images.dims
        )));
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(TrainError::Data(format!(
            "{} has {:?} labels but {} has {} images",
            lab.name, labels.dims, img.name, images.dims[0]
        )));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
        return Err(TrainError::Data(format!(
            "{}: label {bad} is not one of the {} classes",
            lab.name,
            CLASSES.len()
        )));
    }
    Ok(Split {
        images: images.data,
        labels: labels.data,
        rows: images.dims[1],
        cols: images.dims[2],
    })
}

/// SplitMix64: a tiny, well-known generator, so shuffles are the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The whole state: `Rng::new(rng.state())` continues the same sequence (resumed runs).
    pub fn state(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Splits `validation` examples off the training set, stratified by class so each class
/// keeps its share, reproducibly from `seed`. Returns (train, validation).
pub fn split_validation(train: &Split, validation: usize, seed: u64) -> (Split, Split) {
    let mut rng = Rng::new(seed);
    let classes = train.labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in train.labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let (mut val, mut rest) = (Vec::new(), Vec::new());
    let total = train.len().max(1);
    for idx in &mut by_class {
        rng.shuffle(idx);
        let k = (idx.len() * validation.min(total))
            .div_ceil(total)
            .min(idx.len());
        val.extend_from_slice(&idx[..k]);
        rest.extend_from_slice(&idx[k..]);
    }
    val.truncate(validation);
    val.sort_unstable();
    rest.sort_unstable();
    (train.select(&rest), train.select(&val))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Split {
        Split {
            // Each image holds its own index, so the split can be checked.
            images: (0..n)
                .flat_map(|i| [(i % 256) as u8, (i / 256) as u8, 0, 0])
                .collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
            rows: 2,
            cols: 2,
        }
    }

    #[test]
    fn validation_split_is_stratified_disjoint_and_reproducible() {
        let t = toy(1000);
        let (a, va) = split_validation(&t, 100, 7);
        let (b, vb) = split_validation(&t, 100, 7);
        assert_eq!((a.len(), va.len()), (900, 100));
        assert_eq!((&a, &va), (&b, &vb));
        for c in 0..10u8 {
            assert_eq!(va.labels.iter().filter(|&&l| l == c).count(), 10);
        }
        let (_, vc) = split_validation(&t, 100, 8);
        assert_ne!(va, vc, "another seed, another split");
        let ids = |s: &Split| -> Vec<usize> {
            s.images
                .chunks(4)
                .map(|c| c[0] as usize + 256 * c[1] as usize)
                .collect()
        };
        let mut all = [ids(&a), ids(&va)].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "disjoint, nothing lost");
    }

    #[test]
    fn loads_the_debian_data_set_when_installed() {
        let dir = Path::new(DEFAULT_DIR);
        if find(dir, FILES[3].name).is_none() {
            return; // covered in CI, where scripts/test.sh installs it
        }
        let test = load(dir, Part::Test).unwrap();
        assert_eq!((test.len(), test.rows, test.cols), (10_000, 28, 28));
        assert_eq!(test.labels[..3], [9, 2, 1]);
        let e = load(Path::new("/nonexistent"), Part::Test).unwrap_err();
        assert!(e.to_string().contains("dataset-fashion-mnist"), "{e}");
    }
}
