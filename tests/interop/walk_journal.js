// Reads a journal with Adobe's SDK client, as a consumer would.
// Input: {url, token, org, api_key, options, mode, max_pages, expect, caught_up_at, deadline_ms}
// mode "pages": getEventsFromJournal(url, options) once, then its `link.next` until an
//   answer without events (the 204 at the end); every answer is recorded.
// mode "observable": getEventsObservableFromJournal(url, options) until `expect` events
//   arrived (it waits the 204's retry-after itself, then asks `next` again); writes the
//   file "caught-up" once `caught_up_at` events arrived, so the test can add more.
// Output: {events: [{position, key}], pages: [{count, retry_after, next}], error}.
'use strict'
const fs = require('fs')
const sdk = require('@adobe/aio-lib-events')

// The event's dedup key, in the order streamd and CONTRACT.md use: the CloudEvent id,
// the legacy marketoGUID, the older wrapper's CloudEvent id, eventid, event_id.
function keyOf (event) {
  return event.id || event.marketoGUID || (event.event && event.event.id) ||
    event.eventid || event.event_id || null
}

function summary (item) {
  return { position: item.position, key: keyOf(item.event) }
}

async function pages (client, input, out) {
  let url = input.url
  let options = input.options
  for (let n = 0; n < input.max_pages; n++) {
    const answer = await client.getEventsFromJournal(url, options)
    options = undefined // the next link already holds every parameter
    const events = answer.events || []
    out.pages.push({
      count: events.length,
      retry_after: answer.retryAfter === undefined ? null : answer.retryAfter,
      next: answer.link && answer.link.next ? answer.link.next : null
    })
    for (const item of events) out.events.push(summary(item))
    if (events.length === 0) return
    url = answer.link.next
  }
  throw new Error('no end of the journal after ' + input.max_pages + ' pages')
}

function observable (client, input, out) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      subscription.unsubscribe()
      reject(new Error('only ' + out.events.length + ' of ' + input.expect + ' events in time'))
    }, input.deadline_ms)
    const subscription = client.getEventsObservableFromJournal(input.url, input.options)
      .subscribe({
        next: (item) => {
          out.events.push(summary(item))
          if (out.events.length === input.caught_up_at) fs.writeFileSync('caught-up', '')
          if (out.events.length >= input.expect) {
            clearTimeout(timer)
            subscription.unsubscribe()
            resolve()
          }
        },
        error: (error) => { clearTimeout(timer); subscription.unsubscribe(); reject(error) }
      })
  })
}

async function main () {
  const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const out = { events: [], pages: [], error: null }
  try {
    const client = await sdk.init(input.org, input.api_key, input.token, { timeout: 20000 })
    if (input.mode === 'pages') await pages(client, input, out)
    else await observable(client, input, out)
  } catch (error) {
    out.error = String(error && error.message ? error.message : error)
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(out))
  // The observable's poller keeps timers alive: the work is done.
  process.exit(0)
}

main()
