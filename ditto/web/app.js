// Ditto live page: a live session over the documented WebSocket protocol (README, "The protocol").
// Audio goes up as binary float32 chunks (8-byte "DA" header); frames come back as JPEG (kind 1)
// with their audio echoed (kind 2, 16 kHz int16). Audio is scheduled with Web Audio at
// anchor + pts; the canvas shows the newest frame whose pts has been reached on the same clock.
// Conversations: Interrupt barges in (the server drops what it has not sent, the page what it has
// not played); the conversation mode keeps the microphone open and ends an utterance at each pause.
'use strict';
(() => {
  const ECHO_RATE_HZ = 16000;
  const CHUNK_S = 0.2;              // file audio: one chunk per 200 ms, paced at real time
  const PLAYOUT_DELAY_S = 0.15;     // jitter buffer between the first audio echo and its playback
  const KIND_JPEG = 1, KIND_PCM16 = 2, FLAG_IDLE = 2;
  const FRAME_HEADER_BYTES = 36, SAMPLE_TYPE_FLOAT32 = 2;
  // Conversation mode's VAD, tunable in the page's URL for another mic or room (?vad_rms=0.05&vad_hangover_ms=400).
  const pageParam = (name, fallback) => {
    const value = Number(new URLSearchParams(location.search).get(name));
    return value > 0 ? value : fallback;
  };
  const VAD_THRESHOLD_RMS = pageParam('vad_rms', 0.02);        // about -34 dBFS: above a quiet room, below speech
  const VAD_HANGOVER_MS = pageParam('vad_hangover_ms', 600);   // this long under the threshold ends an utterance
  const MAX_PLAYBACK_EVENTS = 100;  // kept in dittoStats.playback

  const $ = (id) => document.getElementById(id);
  const canvas = $('video');
  const painter = canvas.getContext('2d');
  const fresh = () => ({
    state: 'idle', framesReceived: 0, framesDrawn: 0, audioChunksScheduled: 0, chunksSent: 0,
    firstFrameLatencyMs: null, lagP50Ms: null, lagP95Ms: null, fps: 0, framesSkipped: 0,
    idleFrames: 0, rebuffers: 0, audioClock: null, error: null, completed: null,
    controlsSent: [], playback: [], interrupts: 0, framesDropped: 0, audioChunksDropped: 0,
  });
  window.dittoStats = fresh();
  let session = null;

  const stats = () => window.dittoStats;
  const choice = (name) => document.querySelector(`input[name=${name}]:checked`).value;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setStatus(text, isError = false) {
    $('status').textContent = text;
    $('status').className = isError ? 'error' : '';
  }

  function percentile(values, p) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  function toBase64(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  async function fetchBytes(url) {
    const reply = await fetch(url);
    if (!reply.ok) throw new Error(`${url}: HTTP ${reply.status}`);
    return reply.arrayBuffer();
  }

  async function loadPortrait() {
    if (choice('portrait') === 'file') {
      const file = $('portrait-file').files[0];
      if (!file) throw new Error('choose a portrait file (or the example)');
      return { name: file.name, bytes: await file.arrayBuffer() };
    }
    return { name: 'image.png', bytes: await fetchBytes('/example/image.png') };
  }

  async function loadSpeech(ctx) {
    let bytes;
    if (choice('audio') === 'file') {
      const file = $('audio-file').files[0];
      if (!file) throw new Error('choose an audio file (or the example, or the microphone)');
      bytes = await file.arrayBuffer();
    } else {
      bytes = await fetchBytes('/example/audio.wav');
    }
    const decoded = await ctx.decodeAudioData(bytes);
    const mono = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const channel = decoded.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / decoded.numberOfChannels;
    }
    return { samples: mono, rate: decoded.sampleRate };
  }

  // --- sending ------------------------------------------------------------------------------

  function sendControl(s, message) {
    if (s.ws.readyState !== WebSocket.OPEN) return;
    s.ws.send(JSON.stringify(message));
    stats().controlsSent.push(message.type);
  }

  function sendChunk(s, samples) {
    if (s.ended || s.ws.readyState !== WebSocket.OPEN) return;
    const message = new ArrayBuffer(8 + samples.length * 4);
    const view = new DataView(message);
    view.setUint8(0, 0x44); view.setUint8(1, 0x41);  // "DA"
    view.setUint8(2, 1);                             // version
    view.setUint8(3, SAMPLE_TYPE_FLOAT32);
    view.setUint32(4, s.seq++, true);
    const body = new DataView(message, 8);
    for (let i = 0; i < samples.length; i++) body.setFloat32(i * 4, samples[i], true);
    s.ws.send(message);
    s.samplesSent += samples.length;
    const now = performance.now();
    if (s.firstChunkAt === null) s.firstChunkAt = now;
    s.sent.push([s.samplesSent, now]);
    stats().chunksSent++;
  }

  function sendFile(s, speech) {
    const chunk = Math.max(1, Math.round(speech.rate * CHUNK_S));
    const t0 = performance.now();
    let k = 0;
    const tick = () => {
      if (s.ended) return;
      const from = k * chunk;
      if (from >= speech.samples.length) { endAudio(s); return; }
      sendChunk(s, speech.samples.subarray(from, Math.min(speech.samples.length, from + chunk)));
      k++;
      s.timer = setTimeout(tick, Math.max(0, t0 + k * CHUNK_S * 1000 - performance.now()));
    };
    tick();
  }

  // Conversation mode: an energy VAD on the captured PCM. A loud block starts (or continues) an
  // utterance and is sent; VAD_HANGOVER_MS of quiet ends it with end_of_utterance. Quiet between
  // utterances is not sent, so the server idles the face until the next one.
  function splitOnSilence(s, samples) {
    let energy = 0;
    for (let i = 0; i < samples.length; i++) energy += samples[i] * samples[i];
    const loud = Math.sqrt(energy / samples.length) >= VAD_THRESHOLD_RMS;
    const vad = s.vad;
    if (loud) { vad.speaking = true; vad.quietMs = 0; }
    if (!vad.speaking) return;
    sendChunk(s, samples);
    if (loud) return;
    vad.quietMs += (samples.length / s.rate) * 1000;
    if (vad.quietMs >= VAD_HANGOVER_MS) {
      vad.speaking = false;
      sendControl(s, { type: 'end_of_utterance' });
    }
  }

  function startMicrophone(s) {
    const source = s.ctx.createMediaStreamSource(s.mic);
    const processor = s.ctx.createScriptProcessor(4096, 1, 1);
    processor.onaudioprocess = (event) => {
      const samples = event.inputBuffer.getChannelData(0);
      if (s.conversation) splitOnSilence(s, samples); else sendChunk(s, samples);
    };
    const mute = s.ctx.createGain();
    mute.gain.value = 0;  // the processor must reach the destination to run; nothing is heard
    source.connect(processor); processor.connect(mute); mute.connect(s.ctx.destination);
    s.micNodes = [source, processor, mute];
  }

  function endAudio(s) {
    if (s.ended) return;
    s.ended = true;
    clearTimeout(s.timer);
    if (s.mic) s.mic.getTracks().forEach((track) => track.stop());
    (s.micNodes || []).forEach((node) => node.disconnect());
    sendControl(s, { type: 'end_of_audio' });
    $('interrupt').disabled = true;
    setStatus('audio ended; finishing…');
  }

  // Barge-in. File speech: the rest is not sent (the face idles until Stop); the microphone
  // stays open, and what it hears next is the next utterance.
  function interrupt(s) {
    if (s.ended || s.ws.readyState !== WebSocket.OPEN) return;
    clearTimeout(s.timer);
    s.vad.speaking = false;
    sendControl(s, { type: 'interrupt' });
    stats().interrupts++;
    dropUtterancesUpTo(s, s.lastUtterance);
  }

  // --- dropping an interrupted utterance -------------------------------------------------------

  const isDropped = (s, utterance) => utterance > 0 && utterance <= s.droppedUpTo;

  // Frames queued for the canvas and echo audio scheduled ahead, of utterances 1..utterance (also
  // those still arriving: they were in flight). What follows plays from now, not after the hole.
  function dropUtterancesUpTo(s, utterance) {
    if (utterance <= s.droppedUpTo) return;
    s.droppedUpTo = utterance;
    const st = stats();
    s.frames = s.frames.filter((frame) => {
      if (!isDropped(s, frame.utterance)) return true;
      frame.bitmap.close();
      st.framesDropped++;
      return false;
    });
    s.scheduled = s.scheduled.filter(({ node, utterance: u }) => {
      if (!isDropped(s, u)) return true;
      node.stop();
      st.audioChunksDropped++;
      return false;
    });
    s.anchor = null;
  }

  // --- receiving and playback ----------------------------------------------------------------

  const clockS = (s) => (s.audioClock ? s.ctx.currentTime : performance.now() / 1000);

  function scheduleAudio(s, ptsMs, utterance, pcm) {
    if (isDropped(s, utterance)) { stats().audioChunksDropped++; return; }
    const now = clockS(s);
    if (s.anchor === null) s.anchor = now + PLAYOUT_DELAY_S - ptsMs / 1000;
    let at = s.anchor + ptsMs / 1000;
    if (at < now + 0.005) {  // late: push the whole timeline back (a rebuffer)
      s.anchor += now + PLAYOUT_DELAY_S - at;
      at = s.anchor + ptsMs / 1000;
      stats().rebuffers++;
    }
    if (s.audioClock) {
      const buffer = s.ctx.createBuffer(1, pcm.length, ECHO_RATE_HZ);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
      const node = s.ctx.createBufferSource();
      node.buffer = buffer;
      node.connect(s.ctx.destination);
      node.start(at);
      const entry = { node, utterance };
      s.scheduled.push(entry);
      node.onended = () => { s.scheduled = s.scheduled.filter((e) => e !== entry); };
    }
    stats().audioChunksScheduled++;
  }

  function frameLag(s, now, sampleStart, sampleCount) {
    // the input sample at which this frame's audio ends (idle silence taken out), and when it was sent
    const end16k = sampleStart + sampleCount - s.idleSamples;
    const needed = Math.min(s.samplesSent, Math.ceil((end16k * s.rate) / ECHO_RATE_HZ));
    const entry = s.sent.find(([samples]) => samples >= needed) || s.sent[s.sent.length - 1];
    return entry ? now - entry[1] : null;
  }

  function onFrame(s, data, view) {
    const now = performance.now();
    const st = stats();
    const flags = view.getUint16(4, true), pts = view.getUint32(12, true);
    const sampleStart = view.getUint32(16, true), sampleCount = view.getUint32(20, true);
    const utterance = view.getUint32(24, true);
    st.framesReceived++;
    s.lastUtterance = Math.max(s.lastUtterance, utterance);
    if (st.firstFrameLatencyMs === null && s.firstChunkAt !== null) st.firstFrameLatencyMs = now - s.firstChunkAt;
    s.arrivals.push(now);
    while (s.arrivals.length && s.arrivals[0] < now - 1000) s.arrivals.shift();
    st.fps = s.arrivals.length;
    if (flags & FLAG_IDLE) {
      s.idleSamples += sampleCount;
      st.idleFrames++;
    } else {
      const lag = frameLag(s, now, sampleStart, sampleCount);
      if (lag !== null) {
        s.lags.push(lag);
        if (s.lags.length > 250) s.lags.shift();
        st.lagP50Ms = percentile(s.lags, 50);
        st.lagP95Ms = percentile(s.lags, 95);
      }
    }
    if (isDropped(s, utterance)) { st.framesDropped++; return; }
    if (s.anchor === null) s.anchor = clockS(s) + PLAYOUT_DELAY_S - pts / 1000;  // no echo: video only
    createImageBitmap(new Blob([new Uint8Array(data, FRAME_HEADER_BYTES)], { type: 'image/jpeg' }))
      .then((bitmap) => {
        if (isDropped(s, utterance)) { bitmap.close(); st.framesDropped++; return; }  // interrupted while decoding
        s.frames.push({ pts, utterance, bitmap });
        s.frames.sort((a, b) => a.pts - b.pts);
      })
      .catch((error) => console.warn('undecodable frame', error));
  }

  function onBinary(s, data) {
    const view = new DataView(data);
    if (data.byteLength < FRAME_HEADER_BYTES || view.getUint8(0) !== 0x44 || view.getUint8(1) !== 0x46) return;
    const kind = view.getUint8(3);
    if (kind === KIND_PCM16) {
      scheduleAudio(s, view.getUint32(12, true), view.getUint32(24, true),
        new Int16Array(data, FRAME_HEADER_BYTES, view.getUint32(20, true)));
    } else if (kind === KIND_JPEG) {
      onFrame(s, data, view);
    }
  }

  function onControl(s, message, speech) {
    const st = stats();
    if (message.type === 'streaming_started') {
      st.state = 'streaming';
      setStatus(`streaming (${message.backend})`);
      $('stop').disabled = false;
      $('interrupt').disabled = false;
      if (speech) sendFile(s, speech); else startMicrophone(s);
    } else if (message.type === 'playback_started' || message.type === 'playback_finished') {
      st.playback.push({ ...message, atMs: performance.now() });
      if (st.playback.length > MAX_PLAYBACK_EVENTS) st.playback.shift();
      if (message.interrupted) dropUtterancesUpTo(s, message.utterance);
    } else if (message.type === 'metadata') {
      canvas.width = message.width;
      canvas.height = message.height;
    } else if (message.type === 'streaming_completed') {
      st.completed = message;
      st.framesSkipped = message.frames_skipped;
      st.state = 'done';
      setStatus(`done: ${message.frames_sent} frames, ${message.frames_skipped} skipped, ${message.idle_frames} idle`);
      finish(s);
    } else if (message.type === 'error') {
      fail(s, `${message.code}: ${message.message}`);
    }
  }

  function draw() {
    const s = session;
    if (s && s.anchor !== null && s.frames.length) {
      const positionMs = (clockS(s) - s.anchor) * 1000;
      let pick = null;
      while (s.frames.length && s.frames[0].pts <= positionMs) {
        if (pick) pick.bitmap.close();
        pick = s.frames.shift();
      }
      if (pick) {
        painter.drawImage(pick.bitmap, 0, 0, canvas.width, canvas.height);
        pick.bitmap.close();
        stats().framesDrawn++;
      }
    }
    requestAnimationFrame(draw);
  }

  function describePlayback(event) {
    if (!event) return '–';
    if (event.type === 'playback_started') return `utterance ${event.utterance} started`;
    return `utterance ${event.utterance} finished at ${event.position_ms} ms${event.interrupted ? ' (interrupted)' : ''}`;
  }

  function updatePanel() {
    const st = stats();
    const ms = (v) => (v === null ? '–' : `${Math.round(v)} ms`);
    $('panel').textContent = `FPS ${st.fps}\nfirst frame ${ms(st.firstFrameLatencyMs)}\n`
      + `lag p50 ${ms(st.lagP50Ms)}, p95 ${ms(st.lagP95Ms)}\nskipped ${st.framesSkipped}, idle ${st.idleFrames}\n`
      + `playback ${describePlayback(st.playback[st.playback.length - 1])}`;
  }

  // --- session lifecycle ----------------------------------------------------------------------

  function finish(s) {
    endAudio(s);
    $('start').disabled = false;
    $('stop').disabled = true;
    $('interrupt').disabled = true;
  }

  function fail(s, text) {
    const st = stats();
    st.state = 'error';
    st.error = String(text);
    setStatus(`error: ${text}`, true);
    if (s) { s.ended = true; clearTimeout(s.timer); if (s.mic) s.mic.getTracks().forEach((t) => t.stop()); }
    $('start').disabled = false;
    $('stop').disabled = true;
    $('interrupt').disabled = true;
  }

  async function start() {
    $('start').disabled = true;
    window.dittoStats = fresh();
    stats().state = 'connecting';
    setStatus('loading…');
    const ctx = new AudioContext({ sampleRate: 48000 });  // 48 kHz: inside the server's 8-48 kHz range
    await Promise.race([ctx.resume().catch(() => {}), sleep(500)]);
    const s = session = {
      ctx, ws: null, seq: 0, sent: [], samplesSent: 0, firstChunkAt: null, rate: ctx.sampleRate,
      anchor: null, frames: [], arrivals: [], lags: [], idleSamples: 0, ended: false, timer: null,
      audioClock: ctx.state === 'running', mic: null, micNodes: null, scheduled: [],
      conversation: choice('audio') === 'mic' && $('conversation').checked, vad: { speaking: false, quietMs: 0 },
      lastUtterance: 0, droppedUpTo: 0,
    };
    stats().audioClock = s.audioClock;
    try {
      const portrait = await loadPortrait();
      let speech = null;
      if (choice('audio') === 'mic') {
        s.mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      } else {
        speech = await loadSpeech(ctx);
        s.rate = speech.rate;
      }
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const ws = s.ws = new WebSocket(`${scheme}://${location.host}/ws/web-${Math.random().toString(36).slice(2, 10)}`);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => sendControl(s, {
        type: 'start_streaming', live: true, echo_audio: true,
        audio_format: { sample_rate_hz: s.rate, channels: 1, sample_type: 'float32' },
        source: { kind: 'upload', filename: portrait.name, data: toBase64(portrait.bytes) },
      });
      ws.onmessage = (event) => {
        if (typeof event.data === 'string') onControl(s, JSON.parse(event.data), speech);
        else onBinary(s, event.data);
      };
      ws.onclose = (event) => {
        if (stats().state === 'streaming' || stats().state === 'connecting') fail(s, `connection closed (${event.code})`);
      };
      setStatus('connecting…');
    } catch (error) {
      fail(s, error.message || error);
    }
  }

  $('start').addEventListener('click', start);
  $('stop').addEventListener('click', () => { if (session) endAudio(session); });
  $('interrupt').addEventListener('click', () => { if (session) interrupt(session); });
  $('conversation').addEventListener('change', (event) => {  // a conversation is over the microphone
    if (event.target.checked) document.querySelector('input[name=audio][value=mic]').checked = true;
  });
  setInterval(updatePanel, 250);
  requestAnimationFrame(draw);
})();
