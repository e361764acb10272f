//! The signal processing the media and ai services really do, named for what it is.
//!
//! Nothing here is a model: speech "recognition" is energy-based voice activity detection
//! (it finds *where* someone speaks, not *what* they say), emotion detection is a lexicon
//! score of a transcript, denoising is a noise gate followed by a one-pole low-pass filter,
//! and video enhancement is a contrast stretch plus a brightness shift of a grayscale frame.

use serde::{Deserialize, Serialize};

/// Full scale of signed 16-bit PCM.
const FULL_SCALE: f64 = 32768.0;

/// Level of a block of PCM samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    /// Root mean square, dB relative to full scale (−120 for digital silence).
    pub rms_dbfs: f64,
    /// Largest absolute sample, dBFS.
    pub peak_dbfs: f64,
    /// Samples at the rails (|x| ≥ 32767): clipping.
    pub clipped: usize,
    /// Zero crossings per second (a rough brightness/voicing cue).
    pub zero_crossing_rate: f64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

fn dbfs(linear: f64) -> f64 {
    if linear <= 0.0 {
        -120.0
    } else {
        (20.0 * (linear / FULL_SCALE).log10()).max(-120.0)
    }
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Duration of `n` samples at `rate` Hz, in ms.
pub fn duration_ms(n: usize, rate: u32) -> u64 {
    if rate == 0 {
        return 0;
    }
    (n as u64 * 1000) / u64::from(rate)
}

/// Measure a PCM block.
pub fn levels(samples: &[i16], rate: u32) -> Levels {
    let peak = samples
        .iter()
        .map(|&s| i32::from(s).unsigned_abs())
        .max()
        .unwrap_or(0);
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] >= 0) != (w[1] >= 0))
        .count();
    let secs = samples.len() as f64 / f64::from(rate.max(1));
    Levels {
        rms_dbfs: round2(dbfs(rms(samples))),
        peak_dbfs: round2(dbfs(f64::from(peak))),
        clipped: samples
            .iter()
            .filter(|&&s| s == i16::MAX || s <= -i16::MAX)
            .count(),
        zero_crossing_rate: if secs > 0.0 {
            round2(crossings as f64 / secs)
        } else {
            0.0
        },
        duration_ms: duration_ms(samples.len(), rate),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A stretch of detected speech, in ms from the start of the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, ms.
    pub start_ms: u64,
    /// End (exclusive), ms.
    pub end_ms: u64,
}

/// Result of [`voice_activity`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VoiceActivity {
    /// The method, spelled out.
    pub method: String,
    /// Analysis frame length, ms.
    pub frame_ms: u64,
    /// Estimated noise floor (10th percentile of frame energies), dBFS.
    pub noise_floor_dbfs: f64,
    /// Frames louder than this were speech candidates, dBFS.
    pub threshold_dbfs: f64,
    /// Detected speech segments.
    pub segments: Vec<Segment>,
    /// Total speech, ms.
    pub speech_ms: u64,
    /// Chunk length, ms.
    pub total_ms: u64,
}

fn frame_energies_dbfs(samples: &[i16], frame: usize) -> Vec<f64> {
    samples.chunks(frame).map(|c| dbfs(rms(c))).collect()
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return -120.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Energy-based voice activity detection: 20 ms frames; a frame is speech when its RMS is
/// 12 dB above the noise floor (10th percentile of frame energies) and above −50 dBFS;
/// speech runs shorter than 60 ms are dropped and gaps shorter than 100 ms are bridged
/// (hangover). No transcription is attempted.
pub fn voice_activity(samples: &[i16], rate: u32) -> VoiceActivity {
    const FRAME_MS: u64 = 20;
    let frame = ((u64::from(rate) * FRAME_MS) / 1000).max(1) as usize;
    let energies = frame_energies_dbfs(samples, frame);
    let floor = percentile(&energies, 0.10);
    let threshold = (floor + 12.0).max(-50.0);
    let mut flags: Vec<bool> = energies.iter().map(|&e| e > threshold).collect();
    // Bridge short gaps (hangover), then drop short bursts.
    let max_gap = (100 / FRAME_MS) as usize;
    let min_run = (60 / FRAME_MS) as usize;
    let mut i = 0;
    while i < flags.len() {
        if !flags[i] {
            let start = i;
            while i < flags.len() && !flags[i] {
                i += 1;
            }
            let bounded = start > 0 && i < flags.len();
            if bounded && i - start < max_gap {
                flags[start..i].iter_mut().for_each(|f| *f = true);
            }
        } else {
            i += 1;
        }
    }
    let mut segments = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if flags[i] {
            let start = i;
            while i < flags.len() && flags[i] {
                i += 1;
            }
            if i - start >= min_run {
                let end_ms = duration_ms((i * frame).min(samples.len()), rate);
                segments.push(Segment {
                    start_ms: start as u64 * FRAME_MS,
                    end_ms,
                });
            }
        } else {
            i += 1;
        }
    }
    let speech_ms = segments.iter().map(|s| s.end_ms - s.start_ms).sum();
    VoiceActivity {
        method: "energy-based voice activity detection (no transcription)".into(),
        frame_ms: FRAME_MS,
        noise_floor_dbfs: round2(floor),
        threshold_dbfs: round2(threshold),
        segments,
        speech_ms,
        total_ms: duration_ms(samples.len(), rate),
    }
}

/// Result of [`denoise`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Denoised {
    /// The method, spelled out.
    pub method: String,
    /// Processed samples.
    pub samples: Vec<i16>,
    /// Gate threshold used, dBFS.
    pub gate_threshold_dbfs: f64,
    /// 10 ms frames muted by the gate.
    pub gated_frames: usize,
    /// Frames in total.
    pub frames: usize,
    /// Low-pass cut-off, Hz.
    pub cutoff_hz: f64,
    /// Input level.
    pub before: Levels,
    /// Output level.
    pub after: Levels,
}

/// A noise gate (10 ms frames below noise floor + 6 dB, at least −60 dBFS, are muted) followed by
/// a one-pole low-pass filter `y[n] = y[n-1] + a (x[n] - y[n-1])` with
/// `a = 1 - exp(-2π fc / fs)`.
pub fn denoise(samples: &[i16], rate: u32, cutoff_hz: f64) -> Denoised {
    let frame = ((rate / 100) as usize).max(1);
    let energies = frame_energies_dbfs(samples, frame);
    let floor = percentile(&energies, 0.10);
    let threshold = (floor + 6.0).max(-60.0);
    let mut out = Vec::with_capacity(samples.len());
    let mut gated = 0;
    for (chunk, &e) in samples.chunks(frame).zip(&energies) {
        if e <= threshold {
            gated += 1;
            out.extend(std::iter::repeat_n(0i16, chunk.len()));
        } else {
            out.extend_from_slice(chunk);
        }
    }
    let a = 1.0 - (-2.0 * std::f64::consts::PI * cutoff_hz / f64::from(rate.max(1))).exp();
    let mut y = 0.0f64;
    for s in &mut out {
        y += a * (f64::from(*s) - y);
        *s = y.round().clamp(-32768.0, 32767.0) as i16;
    }
    Denoised {
        method: "noise gate + one-pole low-pass".into(),
        before: levels(samples, rate),
        after: levels(&out, rate),
        samples: out,
        gate_threshold_dbfs: round2(threshold),
        gated_frames: gated,
        frames: energies.len(),
        cutoff_hz,
    }
}

/// Resample by linear interpolation. When lowering the rate, a one-pole low-pass at 45 % of
/// the new rate runs first to limit aliasing.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if samples.is_empty() || from == 0 || to == 0 || from == to {
        return samples.to_vec();
    }
    let input: Vec<f64> = if to < from {
        let a = 1.0 - (-2.0 * std::f64::consts::PI * 0.45 * f64::from(to) / f64::from(from)).exp();
        let mut y = 0.0;
        samples
            .iter()
            .map(|&s| {
                y += a * (f64::from(s) - y);
                y
            })
            .collect()
    } else {
        samples.iter().map(|&s| f64::from(s)).collect()
    };
    let n_out = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..n_out)
        .map(|i| {
            let pos = i as f64 * step;
            let k = pos.floor() as usize;
            let frac = pos - k as f64;
            let a = input[k.min(input.len() - 1)];
            let b = input[(k + 1).min(input.len() - 1)];
            (a + (b - a) * frac).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Convert signed 16-bit PCM to unsigned 8-bit PCM (offset binary), as in WAV `pcm_u8`.
pub fn to_u8(samples: &[i16]) -> Vec<u8> {
    samples
        .iter()
        .map(|&s| ((i32::from(s) >> 8) + 128).clamp(0, 255) as u8)
        .collect()
}

/// Result of [`sentiment`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// The method, spelled out.
    pub method: String,
    /// Normalised score in [−1, 1].
    pub score: f64,
    /// `positive`, `negative` or `neutral`.
    pub label: String,
    /// Lexicon words found, with their signed weight after negation and intensifiers.
    pub matched: Vec<(String, f64)>,
    /// Words in the transcript.
    pub words: usize,
}

const LEXICON: &[(&str, f64)] = &[
    ("good", 2.0),
    ("great", 3.0),
    ("excellent", 3.0),
    ("thanks", 2.0),
    ("thank", 2.0),
    ("happy", 3.0),
    ("glad", 2.0),
    ("love", 3.0),
    ("nice", 2.0),
    ("progress", 1.5),
    ("agree", 1.0),
    ("clear", 1.0),
    ("works", 1.5),
    ("fixed", 1.5),
    ("bad", -2.0),
    ("terrible", -3.0),
    ("worried", -2.0),
    ("worry", -2.0),
    ("problem", -1.5),
    ("broken", -2.0),
    ("late", -1.0),
    ("delay", -1.5),
    ("delayed", -1.5),
    ("angry", -3.0),
    ("sad", -2.0),
    ("confused", -1.5),
    ("fails", -2.0),
    ("blocked", -2.0),
];
const NEGATIONS: &[&str] = &["not", "no", "never", "isn't", "don't", "doesn't", "wasn't"];
const INTENSIFIERS: &[(&str, f64)] = &[("very", 1.5), ("really", 1.5), ("so", 1.3), ("bit", 0.5)];

/// Lexicon-based sentiment of a transcript: each lexicon word contributes its weight, flipped
/// by a negation and scaled by an intensifier within the two preceding words; the sum is
/// normalised with `s / sqrt(s² + 15)` (as VADER does) into [−1, 1]; |score| < 0.05 is neutral.
pub fn sentiment(text: &str) -> Sentiment {
    let words: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut total = 0.0;
    let mut matched = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let Some(&(_, weight)) = LEXICON.iter().find(|(lw, _)| lw == w) else {
            continue;
        };
        let mut v = weight;
        for prev in words[i.saturating_sub(2)..i].iter() {
            if NEGATIONS.contains(&prev.as_str()) {
                v = -v * 0.75;
            }
            if let Some(&(_, k)) = INTENSIFIERS.iter().find(|(iw, _)| iw == prev) {
                v *= k;
            }
        }
        total += v;
        matched.push((w.clone(), round2(v)));
    }
    let score = round2(total / (total * total + 15.0).sqrt());
    let label = if score >= 0.05 {
        "positive"
    } else if score <= -0.05 {
        "negative"
    } else {
        "neutral"
    };
    Sentiment {
        method: "lexicon sentiment score (negation and intensifier aware)".into(),
        score,
        label: label.into(),
        matched,
        words: words.len(),
    }
}

/// A small grayscale frame, row-major, one byte per pixel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrayFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` luma values.
    pub pixels: Vec<u8>,
}

/// Statistics of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameStats {
    /// Mean luma.
    pub mean: f64,
    /// Standard deviation of luma (contrast).
    pub std_dev: f64,
    /// Darkest pixel.
    pub min: u8,
    /// Brightest pixel.
    pub max: u8,
}

/// Measure a frame.
pub fn frame_stats(pixels: &[u8]) -> FrameStats {
    if pixels.is_empty() {
        return FrameStats {
            mean: 0.0,
            std_dev: 0.0,
            min: 0,
            max: 0,
        };
    }
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    FrameStats {
        mean: round2(mean),
        std_dev: round2(var.sqrt()),
        min: pixels.iter().copied().min().unwrap_or(0),
        max: pixels.iter().copied().max().unwrap_or(0),
    }
}

/// Result of [`enhance`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enhanced {
    /// The method, spelled out.
    pub method: String,
    /// The processed frame.
    pub frame: GrayFrame,
    /// Before.
    pub before: FrameStats,
    /// After.
    pub after: FrameStats,
}

/// Error for frames whose size does not match their pixel count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFrame {}

/// Contrast stretch (2nd..98th percentile mapped onto 0..255), then a brightness shift that
/// moves the mean luma to `target_mean`.
///
/// # Errors
/// [`BadFrame`] when `width * height` is not the number of pixels, or the frame is empty.
pub fn enhance(frame: &GrayFrame, target_mean: f64) -> Result<Enhanced, BadFrame> {
    let n = frame.width as usize * frame.height as usize;
    if n == 0 || n != frame.pixels.len() {
        return Err(BadFrame(format!(
            "frame is {}x{} but has {} pixels",
            frame.width,
            frame.height,
            frame.pixels.len()
        )));
    }
    let mut sorted = frame.pixels.clone();
    sorted.sort_unstable();
    let lo = f64::from(sorted[(n - 1) * 2 / 100]);
    let hi = f64::from(sorted[(n - 1) * 98 / 100]);
    let span = (hi - lo).max(1.0);
    let stretched: Vec<f64> = frame
        .pixels
        .iter()
        .map(|&p| ((f64::from(p) - lo) * 255.0 / span).clamp(0.0, 255.0))
        .collect();
    let mean = stretched.iter().sum::<f64>() / n as f64;
    let shift = target_mean - mean;
    let pixels: Vec<u8> = stretched
        .iter()
        .map(|&p| (p + shift).round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok(Enhanced {
        method: "contrast stretch (2-98 percentile) + brightness shift".into(),
        before: frame_stats(&frame.pixels),
        after: frame_stats(&pixels),
        frame: GrayFrame {
            width: frame.width,
            height: frame.height,
            pixels,
        },
    })
}

/// Synthetic test material: deterministic, so the demo and the tests know what to expect.
pub mod synth {
    use super::GrayFrame;

    /// A tiny deterministic noise generator (xorshift32).
    struct Noise(u32);

    impl Noise {
        fn next(&mut self) -> f64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.0 = x;
            f64::from(x) / f64::from(u32::MAX) * 2.0 - 1.0
        }
    }

    /// One second of 16 kHz mono PCM: room noise (about −56 dBFS), with a voiced stretch
    /// from `speech.0` to `speech.1` ms (a 150 Hz fundamental and three harmonics with a
    /// 4 Hz syllable envelope, about −14 dBFS).
    pub fn speech_chunk(rate: u32, total_ms: u32, speech: (u32, u32)) -> Vec<i16> {
        let n = (rate as usize * total_ms as usize) / 1000;
        let mut noise = Noise(0x9E37_79B9);
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let ms = (t * 1000.0) as u32;
                let mut v = noise.next() * 50.0;
                if ms >= speech.0 && ms < speech.1 {
                    let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 4.0 * t).sin().abs();
                    let f0 = 150.0;
                    let voiced: f64 = [(1.0, 1.0), (2.0, 0.5), (3.0, 0.3), (4.0, 0.2)]
                        .iter()
                        .map(|(h, a)| a * (2.0 * std::f64::consts::PI * f0 * h * t).sin())
                        .sum();
                    v += 6000.0 * env * voiced;
                }
                v.round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    /// A dim, low-contrast gradient frame (luma about 70..110) with a brighter square.
    pub fn dim_frame(width: u32, height: u32) -> GrayFrame {
        let mut pixels = Vec::with_capacity((width * height) as usize);
        for y in 0..height {
            for x in 0..width {
                let base = 70.0 + 30.0 * f64::from(x) / f64::from(width.max(2) - 1);
                let square =
                    x >= width / 3 && x < 2 * width / 3 && y >= height / 3 && y < 2 * height / 3;
                let v = if square { base + 10.0 } else { base };
                pixels.push(v.round() as u8);
            }
        }
        GrayFrame {
            width,
            height,
            pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vad_finds_the_voiced_stretch() {
        let pcm = synth::speech_chunk(16_000, 1000, (300, 700));
        let v = voice_activity(&pcm, 16_000);
        assert_eq!(v.segments.len(), 1, "{v:?}");
        let s = v.segments[0];
        assert!((280..=320).contains(&s.start_ms), "{s:?}");
        assert!((680..=720).contains(&s.end_ms), "{s:?}");
        assert_eq!(v.total_ms, 1000);
    }

    #[test]
    fn vad_on_silence_finds_nothing() {
        let pcm = synth::speech_chunk(16_000, 500, (0, 0));
        assert!(voice_activity(&pcm, 16_000).segments.is_empty());
        assert!(voice_activity(&[], 16_000).segments.is_empty());
    }

    #[test]
    fn denoise_gates_the_noise_and_keeps_the_speech() {
        let pcm = synth::speech_chunk(16_000, 1000, (300, 700));
        let d = denoise(&pcm, 16_000, 3_400.0);
        assert_eq!(d.samples.len(), pcm.len());
        // The noise-only first 300 ms are muted.
        assert!(d.samples[..4_000].iter().all(|&s| s == 0));
        // The speech survives within a couple of dB.
        let before = levels(&pcm[5_000..11_000], 16_000).rms_dbfs;
        let after = levels(&d.samples[5_000..11_000], 16_000).rms_dbfs;
        assert!((before - after).abs() < 2.0, "{before} vs {after}");
        assert!(d.gated_frames >= 55, "{}", d.gated_frames);
    }

    #[test]
    fn sentiment_scores_words_negations_and_intensifiers() {
        let s = sentiment("Thanks everyone, really great progress.");
        assert_eq!(s.label, "positive");
        assert!(s.score > 0.5);
        let n = sentiment("This is not good, I am worried.");
        assert_eq!(n.label, "negative", "{n:?}");
        assert_eq!(sentiment("The meeting is at ten").label, "neutral");
    }

    #[test]
    fn enhance_stretches_contrast_and_centres_brightness() {
        let f = synth::dim_frame(16, 12);
        let e = enhance(&f, 128.0).expect("valid frame");
        assert!(e.after.std_dev > 2.0 * e.before.std_dev, "{e:?}");
        assert!((e.after.mean - 128.0).abs() < 3.0, "{:?}", e.after);
        let bad = GrayFrame {
            width: 2,
            height: 2,
            pixels: vec![1, 2, 3],
        };
        assert!(enhance(&bad, 128.0).is_err());
    }

    #[test]
    fn resample_halves_the_rate() {
        let pcm = synth::speech_chunk(16_000, 1000, (300, 700));
        let out = resample(&pcm, 16_000, 8_000);
        assert_eq!(out.len(), 8_000);
        let l_in = levels(&pcm, 16_000);
        let l_out = levels(&out, 8_000);
        assert_eq!(l_out.duration_ms, 1000);
        assert!(
            (l_in.rms_dbfs - l_out.rms_dbfs).abs() < 1.5,
            "{l_in:?} {l_out:?}"
        );
        assert_eq!(to_u8(&[0, -32768, 32767]), vec![128, 0, 255]);
    }
}
