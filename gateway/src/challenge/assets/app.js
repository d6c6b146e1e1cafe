// The challenge page: solve the gateway's puzzle in Web Workers, post the answer, check that
// the pass cookie was kept, then load the page that was asked for.
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("netwall-challenge").textContent);
  var status = document.getElementById("status");
  var problem = document.getElementById("problem");
  var bar = document.getElementById("progress");
  var RETRY_KEY = "netwall-challenge-retry";

  function fail(message) {
    problem.textContent = message;
    problem.hidden = false;
    status.textContent = "";
  }

  // Cookies refused: say so instead of solving and looping.
  if (!navigator.cookieEnabled) {
    fail("Your browser refuses cookies for this site. The check keeps its result in a " +
      "cookie; allow cookies for this site and reload the page.");
    return;
  }
  if (!window.Worker || !window.crypto || !window.crypto.subtle) {
    fail("This browser lacks Web Workers or WebCrypto, which the check needs.");
    return;
  }

  var cores = navigator.hardwareConcurrency || 2;
  var count = Math.max(1, cores - 1);
  var expected = Math.pow(2, data.difficulty);
  var started = performance.now();
  var workers = [];
  var tried = [];
  var finished = false;

  function stop() {
    finished = true;
    workers.forEach(function (w) { w.terminate(); });
  }

  for (var i = 0; i < count; i++) {
    (function (index) {
      var w = new Worker(data.worker);
      tried[index] = 0;
      w.onmessage = function (e) {
        if (finished) { return; }
        if (typeof e.data.tried === "number") {
          tried[index] = e.data.tried;
          var total = tried.reduce(function (a, b) { return a + b; }, 0);
          // The chance a solution has been found by now, as a percentage.
          bar.value = Math.min(99, Math.round(100 * (1 - Math.exp(-total / expected))));
        } else if (typeof e.data.nonce === "string") {
          stop();
          submit(e.data.nonce);
        }
      };
      w.onerror = function () {
        if (!finished) {
          stop();
          fail("The check could not run in this browser.");
        }
      };
      w.postMessage({ seed: data.seed, difficulty: data.difficulty, start: index, step: count });
      workers.push(w);
    })(i);
  }

  function retryOrFail(message) {
    // One automatic fresh start (say the puzzle expired in a background tab), never a loop.
    var last = Number(sessionStorage.getItem(RETRY_KEY) || 0);
    if (Date.now() - last > 60000) {
      sessionStorage.setItem(RETRY_KEY, String(Date.now()));
      location.replace(location.href);
    } else {
      fail(message + " Reload the page to try again.");
    }
  }

  function submit(nonce) {
    var elapsed = Math.round(performance.now() - started);
    status.textContent = "Checking the answer\u2026";
    bar.value = 100;
    fetch(data.verify, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ seed: data.seed, nonce: nonce, elapsed_ms: elapsed })
    }).then(function (r) {
      if (!r.ok) {
        retryOrFail("The site did not accept the answer (status " + r.status + ").");
        return null;
      }
      return fetch(data.check, { credentials: "same-origin", cache: "no-store" });
    }).then(function (r) {
      return r ? r.json() : null;
    }).then(function (check) {
      if (!check) { return; }
      if (!check.pass) {
        fail("Your browser did not keep the cookie the check set, so the site cannot tell " +
          "that the check was passed. Allow cookies for this site and reload the page.");
        return;
      }
      sessionStorage.removeItem(RETRY_KEY);
      status.textContent = "Done. Opening the page\u2026";
      location.replace(location.href);
    }).catch(function (e) {
      fail("The check could not reach the site (" + e + "). Reload the page to try again.");
    });
  }
})();
