// Verifies deliveries with Adobe's SDK: for each, the SDK's public check
// verifyDigitalSignatureForEvent (the recipient check on the top-level
// recipient_client_id, then the signatures) and its lower-level helper
// verifyDigitalSignature (src/signatureUtils.js: the signatures only, which is all the
// SDK can check on a batch array). Run with -r keyhost_preload.js; the SDK caches the
// keys in aio-lib-state (AIO_STATE_ENDPOINT points it at a loopback stand-in).
// Input: {recipient, deliveries: [{body_b64, signature_options}]}.
// Output: {results: [{event, event_reason, signature}]}.
'use strict'
const fs = require('fs')
const sdk = require('@adobe/aio-lib-events')
const signatureUtils = require('@adobe/aio-lib-events/src/signatureUtils').exportFunctions

async function main () {
  const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  // The journal credentials are not used by the verifiers, but init requires them.
  const client = await sdk.init('org@AdobeOrg', 'interop-api-key', 'interop-token')
  const results = []
  for (const delivery of input.deliveries) {
    // The raw body as the webhook received it (the SDK takes a string).
    const payload = Buffer.from(delivery.body_b64, 'base64').toString('utf8')
    const options = delivery.signature_options
    const event = await client.verifyDigitalSignatureForEvent(payload, input.recipient, options)
    const signature = await signatureUtils.verifyDigitalSignature(options, input.recipient, payload)
    results.push({
      // true, or an {error: {statusCode, body}} object, or false/undefined (no signature verifies)
      event: event === true,
      event_reason: event === true ? null : (event && event.error ? event.error.body : 'signature'),
      signature: signature === true
    })
  }
  fs.writeFileSync(process.argv[3], JSON.stringify({ results }))
}

main().catch((error) => { console.error(error); process.exit(1) })
