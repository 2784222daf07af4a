#!/usr/bin/env node
// membershipd: hands argv to src/cli and exits with the code it returns (0 ok, 1 failure, 2 bad flag).
import { main } from '../src/cli/index.js';

process.exit(await main(process.argv.slice(2)));
