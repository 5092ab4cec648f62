#!/usr/bin/env node
// A non-Python caller of the suite: loads Parapet's own .proto files with @grpc/proto-loader, checks the
// gateway's standard gRPC health, calls ChatService/Chat without a credential, decoding the google.rpc.Status
// details of its error (ErrorInfo reason and domain), and, when PARAPET_API_KEY is set, runs a streaming chat
// (StreamChat with PARAPET_QUESTION) and reports its text, citations and summary. Prints one JSON object.
//
// usage: [PARAPET_API_KEY=pk_... PARAPET_QUESTION=...] node health_and_chat.js <gateway host:port> <protos dir>
//        [extra include dir...]
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { protoPath: healthProtoPath } = require('grpc-health-check');
const protobuf = require('protobufjs');

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

function rpcStatusTypes(includeDirs) {
  // google.rpc.Status and ErrorInfo from googleapis' .proto files, to read the typed error details that
  // every Parapet error carries in the grpc-status-details-bin trailer.
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    const found = includeDirs.map((dir) => path.join(dir, target)).find((file) => fs.existsSync(file));
    return found ?? protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return { Status: root.lookupType('google.rpc.Status'), ErrorInfo: root.lookupType('google.rpc.ErrorInfo') };
}

function errorInfo(error, types) {
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return null;
  const status = types.Status.decode(raw);
  const packed = status.details.find((any) => any.type_url.endsWith('/google.rpc.ErrorInfo'));
  return packed ? types.ErrorInfo.toObject(types.ErrorInfo.decode(packed.value)) : null;
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

function streamChat(client, apiKey, question) {
  // Events in arrival order, as a product's Node backend would consume them.
  return new Promise((resolve) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${apiKey}`);
    const request = { messages: [{ role: 'ROLE_USER', content: question }], retrieval: { mode: 'RETRIEVAL_MODE_ENABLED' } };
    const call = client.StreamChat(request, metadata, { deadline: deadline() });
    const out = { kinds: [], text: '', citations: [], notices: [], summary: null, trailers: {} };
    call.on('data', (event) => {
      out.kinds.push(event.event);
      if (event.event === 'text_delta') out.text += event.text_delta.text;
      if (event.event === 'citation') out.citations.push(event.citation.document_id);
      if (event.event === 'notice') out.notices.push(event.notice.type);
      if (event.event === 'summary') out.summary = event.summary;
    });
    call.on('status', (status) => {
      out.status = statusName(status.code);
      const overhead = status.metadata.get('parapet-overhead-ms');
      if (overhead.length) out.trailers['parapet-overhead-ms'] = String(overhead[0]);
    });
    call.on('error', (error) => {
      out.error = { status: statusName(error.code), details: error.details };
    });
    call.on('end', () => setTimeout(() => resolve(out), 50));
  });
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
    if (chat.error) {
      const info = errorInfo(chat.error, rpcStatusTypes(extraIncludes));
      result.chat = {
        code: chat.error.code,
        status: statusName(chat.error.code),
        details: chat.error.details,
        reason: info ? info.reason : null,
        domain: info ? info.domain : null,
      };
    } else {
      result.chat = { code: 0, status: 'OK' };
    }
    if (process.env.PARAPET_API_KEY) {
      result.stream = await streamChat(chatClient, process.env.PARAPET_API_KEY, process.env.PARAPET_QUESTION ?? 'hello');
    }
    chatClient.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ fatal: String(error && error.stack ? error.stack : error) }) + '\n');
  process.exit(1);
});
