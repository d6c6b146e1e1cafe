// Search nonces start, start + step, ... for SHA-256(seed ":" nonce) with `difficulty`
// leading zero bits, with WebCrypto, in batches so many digests are in flight at once.
"use strict";
var BATCH = 512;
var REPORT_EVERY = 8192;

function zeroBits(h) {
  var bits = 0;
  for (var i = 0; i < h.length; i++) {
    if (h[i] === 0) { bits += 8; continue; }
    return bits + Math.clz32(h[i]) - 24;
  }
  return bits;
}

onmessage = async function (e) {
  var seed = e.data.seed;
  var difficulty = e.data.difficulty;
  var step = e.data.step;
  var n = e.data.start;
  var encoder = new TextEncoder();
  var prefix = seed + ":";
  var tried = 0;
  var reported = 0;
  var nonces = new Array(BATCH);
  var jobs = new Array(BATCH);
  for (;;) {
    for (var i = 0; i < BATCH; i++) {
      var s = String(n);
      nonces[i] = s;
      jobs[i] = crypto.subtle.digest("SHA-256", encoder.encode(prefix + s));
      n += step;
    }
    var hashes = await Promise.all(jobs);
    for (var j = 0; j < BATCH; j++) {
      if (zeroBits(new Uint8Array(hashes[j])) >= difficulty) {
        postMessage({ nonce: nonces[j] });
        return;
      }
    }
    tried += BATCH;
    if (tried - reported >= REPORT_EVERY) {
      reported = tried;
      postMessage({ tried: tried });
    }
  }
};
