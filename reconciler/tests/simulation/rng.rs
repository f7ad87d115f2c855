//! A seeded pseudo-random generator (splitmix64): one seed, one fault schedule, and no crate to pin.

/// splitmix64: tiny, fast, and every seed (0 included) gives a well-mixed stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0. The modulo bias is irrelevant for `n` this small.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times out of a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, which must not be empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[test]
fn the_same_seed_gives_the_same_stream() {
    let a: Vec<u64> = (0..8)
        .map({
            let mut rng = Rng::new(7);
            move |_| rng.next_u64()
        })
        .collect();
    let mut rng = Rng::new(7);
    assert_eq!(a, (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>());
    assert_ne!(a[0], Rng::new(8).next_u64());
}
