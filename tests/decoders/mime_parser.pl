# Decode a message with Perl's MIME::Parser (Debian libmime-tools-perl), independently of Python.
# Prints one JSON object: the Subject and the first text part, both as UTF-8.
use strict;
use warnings;
use Encode qw(decode);
use JSON::PP;
use MIME::Parser;

my $parser = MIME::Parser->new;
$parser->output_to_core(1);
$parser->tmp_to_core(1);
my $entity = $parser->parse_open($ARGV[0]);
my $part = $entity;
while ($part->is_multipart) { $part = ($part->parts)[0]; }
my $charset = $part->head->mime_attr('content-type.charset') || 'us-ascii';
my $body = decode($charset, $part->bodyhandle->as_string);
my $subject = $entity->head->get('Subject') // '';
chomp $subject;
$subject = decode('MIME-Header', $subject);
print JSON::PP->new->utf8->canonical->encode(
    { subject => $subject, body => $body, charset => $charset }), "\n";
