//! Image folders: classes and files in name order, decoding PNG/JPEG (grayscale widened to
//! RGB), the resize + centre-crop + normalise transform, a clear error naming an unreadable
//! file, and a batch through a ResNet.

use super::*;

use kiln::Tensor;
use kiln::autograd::Var;
use kiln::data::images::{EvalTransform, ImageFolder};
use kiln::models::resnet::{ResNet, ResNetOptions};

#[test]
fn image_folder_decodes_transforms_and_feeds_a_resnet() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for d in ["dog", "cat", ".cache"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    image::RgbImage::from_pixel(40, 30, image::Rgb([255, 0, 0])).save(root.join("cat/b.png")).unwrap();
    let gradient = image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([(x * 12) as u8, (y * 12) as u8, 128]));
    gradient.save(root.join("cat/a.jpg")).unwrap();
    image::GrayImage::from_pixel(17, 23, image::Luma([51])).save(root.join("dog/c.png")).unwrap();
    std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
    std::fs::write(root.join(".cache/x.png"), "hidden").unwrap();

    let folder = ImageFolder::scan(root).unwrap();
    assert_eq!(folder.classes, ["cat", "dog"]);
    let names: Vec<(String, usize)> =
        folder.items.iter().map(|(p, k)| (p.file_name().unwrap().to_string_lossy().into_owned(), *k)).collect();
    assert_eq!(names, [("a.jpg".to_string(), 0), ("b.png".to_string(), 0), ("c.png".to_string(), 1)]);

    // A solid colour stays that colour whatever the resampling: every pixel is (v/255 − mean)/std.
    let t = EvalTransform { resize: 16, crop: 12, ..EvalTransform::imagenet() };
    let red = t.load(&root.join("cat/b.png")).unwrap();
    assert_eq!(red.len(), 3 * 12 * 12);
    for (ch, v) in [(0, 1.0f32), (1, 0.0), (2, 0.0)] {
        let want = (v - t.mean[ch]) / t.std[ch];
        assert!(red[ch * 144..(ch + 1) * 144].iter().all(|&x| (x - want).abs() < 1e-6), "channel {ch}");
    }
    let gray = t.load(&root.join("dog/c.png")).unwrap();
    for ch in 0..3 {
        let want = (0.2 - t.mean[ch]) / t.std[ch];
        assert!(gray[ch * 144..(ch + 1) * 144].iter().all(|&x| (x - want).abs() < 1e-6), "gray channel {ch}");
    }
    // The centre crop of a horizontal ramp is symmetric about the ramp's middle.
    let ramp = image::RgbImage::from_fn(32, 16, |x, _| image::Rgb([(x * 8) as u8, 0, 0]));
    let out = EvalTransform { resize: 16, crop: 16, mean: [0.0; 3], std: [1.0; 3] }.apply(&ramp);
    let row: Vec<f32> = out[..16].to_vec();
    assert!(row.windows(2).all(|w| w[1] > w[0]), "{row:?}");
    assert!((row[0] + row[15] - (8.0 * 31.0 / 255.0)).abs() < 0.05, "{row:?}");

    // A truncated file is an error that names it.
    let png = std::fs::read(root.join("cat/b.png")).unwrap();
    std::fs::write(root.join("dog/broken.png"), &png[..png.len() / 2]).unwrap();
    let err = t.load(&root.join("dog/broken.png")).unwrap_err().to_string();
    assert!(err.contains("broken.png") && err.contains("cannot decode"), "{err}");
    std::fs::remove_file(root.join("dog/broken.png")).unwrap();

    // The folder as one batch through the tiny ResNet.
    let paths: Vec<&std::path::Path> = folder.items.iter().map(|(p, _)| p.as_path()).collect();
    let t = EvalTransform { resize: 40, crop: 32, ..EvalTransform::imagenet() };
    let batch = t.load_batch(&paths).unwrap();
    let g = gpu();
    let model = ResNet::load(g, &fixture("resnet18_tiny"), &ResNetOptions::default()).unwrap();
    let x = Var::constant(Tensor::from_f32(g, &batch, &[3, 3, 32, 32]).unwrap());
    let logits = model.forward(&Tape::no_grad(g), &x).unwrap();
    assert_eq!(logits.shape(), [3, 3]);
    assert!(logits.value.to_f32_vec(g).unwrap().iter().all(|v| v.is_finite()));

    let err = ImageFolder::scan(&root.join("cat/../dog/..").join("missing")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}

/// Random-resized crops and flips are reproducible from (seed, epoch, example), differ across
/// examples, keep a solid image solid, and flip as a mirror.
#[test]
fn train_transform_is_seeded_and_flips() {
    use kiln::data::images::TrainTransform;
    let ramp = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 77]));
    let t = TrainTransform::imagenet(16);
    let draw = |epoch: u64, example: u64| t.apply(&ramp, &mut TrainTransform::rng(3, epoch, example));
    assert_eq!(draw(0, 5), draw(0, 5), "same seed, epoch and example: same crop");
    assert_ne!(draw(0, 5), draw(0, 6));
    assert_ne!(draw(0, 5), draw(1, 5));
    let solid = image::RgbImage::from_pixel(30, 20, image::Rgb([0, 255, 0]));
    let out = t.apply(&solid, &mut TrainTransform::rng(1, 0, 0));
    let want = (1.0 - t.mean[1]) / t.std[1];
    assert!(out[256..512].iter().all(|&v| (v - want).abs() < 1e-6));

    // The whole square image, resized: each draw is it or its mirror, and both occur.
    let square = image::RgbImage::from_fn(32, 32, |x, _| image::Rgb([(x * 8) as u8, 0, 0]));
    let whole = TrainTransform { scale: (1.0, 1.0), ratio: (1.0, 1.0), ..TrainTransform::imagenet(16) };
    let (mut plain, mut mirrored) = (0, 0);
    for example in 0..16 {
        let out = whole.apply(&square, &mut TrainTransform::rng(9, 0, example));
        let row = &out[..16];
        if row.windows(2).all(|w| w[1] > w[0]) {
            plain += 1;
        } else if row.windows(2).all(|w| w[1] < w[0]) {
            mirrored += 1;
        } else {
            panic!("neither the image nor its mirror: {row:?}");
        }
    }
    assert!(plain > 0 && mirrored > 0, "{plain} plain, {mirrored} mirrored");
}
