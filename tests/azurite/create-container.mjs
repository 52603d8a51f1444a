// Creates a blob container on Azurite with a SharedKey-signed request (the emulator, like
// Azure, refuses anonymous writes): node create-container.mjs ENDPOINT ACCOUNT KEY CONTAINER
// ENDPOINT is the account's blob endpoint, path style (http://127.0.0.1:10000/devstoreaccount1).
import crypto from 'node:crypto';

const [endpoint, account, key, container] = process.argv.slice(2);
const url = new URL(`${endpoint}/${container}?restype=container`);
const headers = { 'x-ms-date': new Date().toUTCString(), 'x-ms-version': '2021-08-06' };
// VERB, then the eleven standard headers (all empty here: Content-Length 0 signs as empty),
// then the x-ms-* headers in order, then the resource with its query parameters.
const canonicalHeaders = Object.keys(headers).sort().map((h) => `${h}:${headers[h]}\n`).join('');
const canonicalResource = `/${account}${url.pathname}\nrestype:container`;
const toSign = `PUT\n${'\n'.repeat(11)}${canonicalHeaders}${canonicalResource}`;
const signature = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(toSign, 'utf8').digest('base64');
const resp = await fetch(url, {
  method: 'PUT',
  headers: { ...headers, 'Content-Length': '0', Authorization: `SharedKey ${account}:${signature}` },
});
// 409: it exists already, which is as good.
if (resp.status !== 201 && resp.status !== 409) {
  console.error(`creating container ${container}: ${resp.status} ${await resp.text()}`);
  process.exit(1);
}
