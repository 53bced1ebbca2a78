// Loaded with `node -r` before the SDK: points the SDK's hard-coded public-key host
// (https://static.adobeioevents.com) at the loopback key server in INTEROP_KEY_HOST,
// and refuses every request that would leave loopback, so the suite never talks to
// Adobe. It wraps the node-fetch module the SDK requires (the module object in Node's
// require cache), the way any -r preload may; nothing under node_modules is edited.
'use strict'
const path = require('path')
const Module = require('module')

const ADOBE_KEY_HOST = 'https://static.adobeioevents.com'
const keyHost = process.env.INTEROP_KEY_HOST
if (!keyHost || !/^http:\/\/127\.0\.0\.1:\d+$/.test(keyHost)) {
  throw new Error('INTEROP_KEY_HOST must be http://127.0.0.1:PORT, got ' + keyHost)
}

// The node-fetch the SDK (and the Adobe libraries beside it) resolve.
const sdkDir = path.dirname(require.resolve('@adobe/aio-lib-events'))
const fetchPath = require.resolve('node-fetch', { paths: [sdkDir] })
const realFetch = require(fetchPath)

function redirected (url) {
  const text = typeof url === 'string' ? url : (url && url.href) || String(url)
  const target = text.startsWith(ADOBE_KEY_HOST + '/')
    ? keyHost + text.slice(ADOBE_KEY_HOST.length)
    : text
  if (!/^http:\/\/127\.0\.0\.1:\d+\//.test(target)) {
    throw new Error('interop preload: refusing a request off loopback: ' + text)
  }
  return target
}

function wrappedFetch (url, options) {
  // Only a string or URL is expected here (the SDK never passes a Request object).
  try {
    return realFetch(redirected(url), options)
  } catch (error) {
    return Promise.reject(error)
  }
}
Object.assign(wrappedFetch, realFetch) // Headers, Request, Response, FetchError...
wrappedFetch.default = wrappedFetch
require.cache[fetchPath].exports = wrappedFetch

// Nothing else may load a second copy: every resolution of 'node-fetch' must be ours.
const resolve = Module._resolveFilename
Module._resolveFilename = function (request, ...rest) {
  const found = resolve.call(this, request, ...rest)
  if (request === 'node-fetch' && found !== fetchPath) {
    throw new Error('interop preload: a second node-fetch at ' + found)
  }
  return found
}
