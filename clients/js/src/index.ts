// @herald/client: Herald's own client. See docs/client-js.md.
export { Herald } from './client.js';
export type { ClientEvents, ConnectionState, ConnectionStatus, HeraldOptions } from './client.js';
export { HeraldError, backoffDelay, closeAdvice } from './errors.js';
export type { CloseAdvice, ErrorName } from './errors.js';
export type { EventMeta, Handler, Unbind } from './events.js';
export { Subscription } from './subscription.js';
export type { Member, StreamPosition, SubscriptionEvents, SubscriptionState, UnrecoveredReason } from './subscription.js';
export type { TransportName, WebSocketConstructor, WebSocketLike } from './transport.js';
