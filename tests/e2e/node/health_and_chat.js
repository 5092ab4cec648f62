#!/usr/bin/env node
// A non-Python caller of the suite: loads Parapet's own .proto files with @grpc/proto-loader, checks the
// gateway's standard gRPC health, and calls ChatService/Chat without a token. Prints one JSON object.
//
// usage: node health_and_chat.js <gateway host:port> <protos dir> [extra include dir...]
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { protoPath: healthProtoPath } = require('grpc-health-check');

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const DEADLINE_MS = 10000;

function protoFiles(dir) {
  // Every .proto under protos/, relative to it, so imports resolve exactly as buf and protoc see them.
  const found = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.proto')) {
      found.push(path.relative(dir, path.join(entry.parentPath ?? entry.path, entry.name)));
    }
  }
  return found.sort();
}

function lookup(root, dottedName) {
  return dottedName.split('.').reduce((node, part) => (node ? node[part] : undefined), root);
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: deadline() }, (error, response) => {
      resolve({ error, response });
    });
  });
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

async function main() {
  const [address, protosDir, ...extraIncludes] = process.argv.slice(2);
  if (!address || !protosDir) {
    throw new Error('usage: node health_and_chat.js <gateway host:port> <protos dir> [include dir...]');
  }
  const files = protoFiles(protosDir);
  const ours = grpc.loadPackageDefinition(
    protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protosDir, ...extraIncludes] }),
  );
  const health = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, LOADER_OPTIONS));
  const credentials = grpc.credentials.createInsecure();
  const result = { proto_files: files.length };

  const healthClient = new (lookup(health, 'grpc.health.v1.Health'))(address, credentials);
  const checked = await unary(healthClient, 'Check', { service: '' });
  result.health = checked.error ? `ERROR ${statusName(checked.error.code)}` : checked.response.status;
  healthClient.close();

  const ChatService = lookup(ours, 'parapet.gateway.v1.ChatService');
  if (!ChatService) {
    result.chat = { error: 'parapet.gateway.v1.ChatService not found in protos/' };
  } else {
    const chatClient = new ChatService(address, credentials);
    const chat = await unary(chatClient, 'Chat', {});
    result.chat = chat.error
      ? { code: chat.error.code, status: statusName(chat.error.code), details: chat.error.details }
      : { code: 0, status: 'OK' };
    chatClient.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ fatal: String(error && error.stack ? error.stack : error) }) + '\n');
  process.exit(1);
});
