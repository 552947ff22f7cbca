// node -r tests/support/loopback-only.js node_modules/kinesis-local/main.js
// kinesis-local hard-codes 0.0.0.0 as its host; this preload forces every net.Server.listen()
// onto 127.0.0.1 so the test servers are never reachable from outside the machine.
'use strict';
const net = require('net');
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args.length && typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] === 'string') args[1] = '127.0.0.1'; else args.splice(1, 0, '127.0.0.1');
  }
  return orig.apply(this, args);
};
