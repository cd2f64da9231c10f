//! Writes a grid of augmented training images of an experiment to a PNG, to see what
//! the network is fed: `cargo run --release --example augment_preview -- FILE OUT.png`.

use rand::SeedableRng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (file, out) = (&args[1], &args[2]);
    let exp = tlcap::config::load_file(std::path::Path::new(file))?;
    let data = tlcap::data::Dataset::load(&exp, &|_, _| {})?;
    let images: Vec<usize> = data.train.iter().take(8).copied().collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (aug, _) = data.train_batch(&images, &exp.data.augment, &mut rng);
    let (plain, _) = data.val_batch(&images);
    // Top row: as stored; bottom row: augmented.
    let grid = tch::Tensor::cat(&[plain, aug], 0)
        .clamp(0.0, 255.0)
        .to_kind(tch::Kind::Uint8);
    let (h, w) = (exp.data.image_size.height, exp.data.image_size.width);
    let mut img = image::RgbImage::new(w * 8, h * 2);
    for (i, t) in (0..16).map(|i| (i, grid.get(i))) {
        let v = Vec::<u8>::try_from(t.permute([1, 2, 0]).contiguous().flatten(0, -1))?;
        let (x0, y0) = ((i % 8) as u32 * w, (i / 8) as u32 * h);
        for y in 0..h {
            for x in 0..w {
                let k = ((y * w + x) * 3) as usize;
                img.put_pixel(x0 + x, y0 + y, image::Rgb([v[k], v[k + 1], v[k + 2]]));
            }
        }
    }
    img.save(out)?;
    Ok(())
}
